"""Training objectives that wrap any student: HetComp (L_O, then L_F after the switch) and w/o KD.

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
import dataclasses
from typing import Any

import numpy as np
import torch

from hetcomp_dist.config import Config, StudentConfig
from hetcomp_dist.errors import InputError
from hetcomp_dist.student import losses
from hetcomp_dist.student.batching import Batch  # noqa: F401  (re-exported: objectives consume batches)
from hetcomp_dist.student.models import Student


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

    def start_epoch(self, epoch: int) -> None:
        """Called before epoch `epoch` (1-based) trains."""

    def dkc_due(self, epoch: int) -> bool:
        return False

    def set_knowledge(self, round_idx: int, manifest: dict, targets: np.ndarray, pos: np.ndarray) -> None:
        """Targets (n_local, K) and P+ (n_local, P) int32, -1 padded, of a round's manifest."""
        raise RuntimeError(f"{self.name} uses no knowledge rounds")

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


class WoKDObjective(Objective):
    """ "w/o KD": the student's own base loss (BPR for MF/DNN, CML hinge for ML), *summed* over the
    batch's triples as in the paper's public code. With Adam the scale only matters against weight
    decay: a sum makes the 1e-5 decay ~1000x weaker than a mean would. On CiteULike (MF) the sum
    gave valid R@50 ~0.13 (the paper's w/o KD: 0.137 test), the mean ~0.17."""

    name = "wokd"
    needs_negatives = True

    def loss(self, model: Student, batch: Batch) -> torch.Tensor:
        return model.base_loss(batch.inter_users, batch.inter_items, batch.neg_items).sum()


class HetCompObjective(Objective):
    """HetComp: 0.01·Σ_u L_O until the switch, then 0.005·Σ_u L_F, over the batch's unique users.

    P+ (observed, fixed) and the targets T_u (unobserved, rebuilt by each DKC round) are kept
    apart: they are separate lists whose tails exclude the user's whole train list, and only T_u
    is refreshed. Logits are clamped to ±logit_clamp. Tails are exact over the catalogue unless
    ``student.tail = "sampled"``.

    Args:
        cfg: the run's config (student and knowledge sections are used).
    """

    name = "hetcomp"
    needs_knowledge = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        s = cfg.student
        self.clamp, self.lo_scale, self.lf_scale = s.logit_clamp, s.lo_scale, s.lf_scale
        self.tail, self.tail_samples, self.chunk = s.tail, s.tail_samples, s.tail_chunk
        self.period = cfg.knowledge.period
        self.round, self.switched, self.means = -1, False, {}
        self.round_hash: str | None = None
        self._expect_hash: str | None = None
        self.register_buffer("targets", torch.zeros(0, 0, dtype=torch.int32), persistent=False)
        self.register_buffer("pos", torch.zeros(0, 0, dtype=torch.int32), persistent=False)

    def _tail_fn(self, generator: torch.Generator | None):
        if self.tail == "sampled":
            return lambda a, c, r, k: losses.sampled_tail_logsumexp(
                a, c, r, k, self.tail_samples, generator, self.clamp
            )
        return lambda a, c, r, k: losses.tail_logsumexp(a, c, r, k, self.clamp, self.chunk)

    def loss(self, model: Student, batch: Batch) -> torch.Tensor:
        if self.round < 0:
            raise RuntimeError("HetCompObjective.loss before set_knowledge (no targets loaded)")
        a, c = model.user_side(batch.users), model.item_side()
        pos = self.pos[batch.rows].long()
        targets = self.targets[batch.rows].long()
        fn = losses.fine_loss if self.switched else losses.overall_loss
        per_user = fn(
            a,
            c,
            pos,
            targets,
            batch.train_rows,
            batch.train_items,
            self.clamp,
            self._tail_fn(batch.generator),
        )
        return (self.lf_scale if self.switched else self.lo_scale) * per_user.sum()

    def dkc_due(self, epoch: int) -> bool:
        return not self.switched and epoch >= self.period and epoch % self.period == 0

    def set_knowledge(self, round_idx: int, manifest: dict, targets: np.ndarray, pos: np.ndarray) -> None:
        h = manifest.get("config_hash")
        if self._expect_hash is not None and h != self._expect_hash:
            # the round in this student's folder was rebuilt after this checkpoint was taken (e.g. by hand),
            # so its targets are not the ones this student trained on
            raise InputError(
                f"knowledge round={round_idx}",
                "rebuilt since this student's checkpoint",
                "delete this student's folder to restart it",
            )
        self._expect_hash, self.round_hash = None, h
        dev = self.targets.device
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int32)).to(dev)
        self.pos = torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int32)).to(dev)
        self.round = int(round_idx)
        self.switched = bool(manifest.get("switch", False))
        self.means = {k: float(v) for k, v in dict(manifest.get("means", {})).items()}

    def state(self) -> dict[str, Any]:
        return {"round": self.round, "switched": self.switched, "round_hash": self.round_hash}

    def load_state(self, state: dict[str, Any]) -> None:
        self.round, self.switched = int(state["round"]), bool(state["switched"])
        self._expect_hash = state.get("round_hash")  # checked when the round's targets are loaded again

    def log_fields(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "switch": self.switched,
            "loss_kind": "L_F" if self.switched else "L_O",
            "means": dict(self.means),
        }


OBJECTIVES: dict[str, type[Objective]] = {"hetcomp": HetCompObjective, "wokd": WoKDObjective}
import hetcomp_dist.baselines.objectives  # noqa: E402,F401  (registers rd, rrd, mtd, cldrd, dcd in OBJECTIVES)


def build_objective(method: str, cfg: Config) -> Objective:
    """The objective of `method` (hetcomp | wokd; baselines register here)."""
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[method](cfg)


def model_config(cfg: Config) -> StudentConfig:
    """The student settings the model is built with for `cfg.student.method`.

    CML's unit-ball clip (`ml_max_norm`) belongs to CML's hinge: it applies to the ML student only
    where the objective trains the student's base loss (w/o KD and the baselines). HetComp trains no
    base loss, and clipped rows keep its logits in [-4 r^2, 0], too narrow for the listwise losses
    against a full-catalogue tail (CiteULike valid R@50: .1817 clipped, .2958 unclipped).
    """
    s = cfg.student
    if s.model == "ml" and not OBJECTIVES[s.method].needs_negatives and s.ml_max_norm:
        return dataclasses.replace(s, ml_max_norm=0.0)
    return s


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
