"""The objective contract: what every training method (HetComp, w/o KD, the baselines) implements.

An objective turns one step's `Batch` into this rank's share of the loss. The trainer sums
gradients over ranks (not averages), so every objective returns its rank-local *sum* with the
global normalisation already applied -- then W ranks of a global batch train exactly like one
process on the whole batch. Baselines (RD, RRD, ...) subclass `Objective` and reuse the hooks:

- ``needs_knowledge`` / ``set_knowledge``: the trainer loads targets T_u and P+ of a knowledge
  round for this rank's users and hands them over (round 0 before training, then after each DKC);
- ``dkc_due(epoch)``: whether a DKC round runs after this epoch's evaluation;
- ``state`` / ``load_state``: plain values saved in checkpoints (round index, switch flag);
- ``log_fields``: what goes into metrics.jsonl and progress lines.

Objectives are ``nn.Module`` so that one with learnable parts (e.g. MTD's teacher weights) is
trained and all-reduced with the student.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hetcomp_dist.config import Config
from hetcomp_dist.models.students import Student
from hetcomp_dist.objectives import losses


@dataclass
class Batch:
    """One step's data on one rank (tensors on the training device).

    Attributes:
        users: (B,) int64 unique absolute user ids of the sampled interactions, sorted.
        rows: (B,) int64 the same users as rows of the rank's local arrays (user - lo).
        inter_users, inter_items: (n,) int64 the sampled train interactions.
        neg_items: (n,) int64 one sampled unobserved item per interaction, or None.
        train_rows, train_items: (nnz,) int64 every train pair of the batch users, as
            (row in 0..B-1, item).
        global_batch: interactions per step summed over ranks (the loss normaliser).
        generator: RNG on the training device for sampled terms.
    """

    users: torch.Tensor
    rows: torch.Tensor
    inter_users: torch.Tensor
    inter_items: torch.Tensor
    neg_items: torch.Tensor | None
    train_rows: torch.Tensor
    train_items: torch.Tensor
    global_batch: int
    generator: torch.Generator | None = None


class Objective(torch.nn.Module, abc.ABC):
    """Base objective: a loss over a `Batch` plus hooks the trainer calls."""

    name = "base"
    needs_knowledge = False
    needs_negatives = False

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    @abc.abstractmethod
    def loss(self, model: Student, batch: Batch) -> torch.Tensor:
        """Scalar: this rank's share of the global loss of the step."""

    def tail_fn(self, batch: Batch):
        """The tail log-sum-exp the run's student section asks for (``student.tail``, its clamp, block
        size, sample and kernel), as a function (a, c, rows, cols) -> (B,)."""
        s = self.cfg.student
        return losses.tail_estimator(
            s.tail, s.logit_clamp, s.tail_chunk, s.tail_samples, batch.generator, s.tail_kernel
        )

    def start_epoch(self, epoch: int) -> None:
        """Called before epoch `epoch` (1-based) trains."""

    def dkc_due(self, epoch: int) -> bool:
        return False

    def set_knowledge(self, round_idx: int, manifest: dict, targets: np.ndarray, pos: np.ndarray) -> None:
        """Targets (n_local, K) and P+ (n_local, P) int32, -1 padded, of a round's manifest."""
        raise RuntimeError(f"{self.name} uses no knowledge rounds")

    def final_phase(self) -> bool:
        """Whether training is in its last phase (where a plateau may lower the learning rate)."""
        return True

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def log_fields(self) -> dict[str, Any]:
        return {}

    def attach(self, run: str, data: Any) -> None:
        """Called once per rank, with its `RankData`, after the task is on its device (baselines load
        their teacher lists here)."""

    def after_evaluation(self, epoch: int, metrics: dict) -> None:
        """Called on every rank after each evaluation, with the all-reduced metrics (CL-DRD's curriculum)."""

    @classmethod
    def hash_parts(cls, run: str, cfg: Config) -> list:
        """Extra inputs of a training's config hash (baselines: their section and the teachers' exports)."""
        return []


class TrainTask(torch.nn.Module):
    """Student + objective as one module, so DDP sees every trainable parameter through forward."""

    def __init__(self, model: Student, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.objective.loss(self.model, batch)

    def user_param_names(self) -> list[str]:
        """Fully qualified names of the per-user tables (kept out of the all-reduce)."""
        return [f"model.{n}" for n in self.model.user_tables]

    def rank_local_names(self) -> list[str]:
        """What DDP must leave alone: the user tables and the objective's buffers (each rank holds
        the knowledge of its own users only)."""
        return self.user_param_names() + [f"objective.{n}" for n, _ in self.objective.named_buffers()]
