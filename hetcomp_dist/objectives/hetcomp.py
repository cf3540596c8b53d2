"""HetComp (L_O until the switch, then L_F; METHOD.md §3) and "w/o KD" (the student's base loss alone)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hetcomp_dist.config import Config
from hetcomp_dist.errors import InputError
from hetcomp_dist.models.students import Student
from hetcomp_dist.objectives import losses
from hetcomp_dist.objectives.base import Batch, Objective


class WoKDObjective(Objective):
    """ "w/o KD": the student's own base loss (BPR for MF/DNN, CML hinge for ML), *summed* over the
    batch's triples as in the paper's public code. With Adam the scale only matters against weight
    decay: a sum makes the weight decay weaker against the gradient than a mean would, as in the
    paper's code."""

    name = "wokd"
    needs_negatives = True

    def loss(self, model: Student, batch: Batch) -> torch.Tensor:
        return model.base_loss(batch.inter_users, batch.inter_items, batch.neg_items).sum()


class HetCompObjective(Objective):
    """HetComp: 0.01·Σ_u L_O until the switch, then 0.005·Σ_u L_F, over the batch's unique users.

    P+ (observed, fixed) and the targets T_u (unobserved, rebuilt by each DKC round) are kept
    apart: they are separate lists whose tails exclude the user's whole train list, and only T_u
    is refreshed. L_O reads the first ``student.lo_topk`` items of T_u (default: all). Logits are clamped
    to ±logit_clamp. Tails are exact over the catalogue unless
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
        self.lo_topk = s.lo_topk or cfg.knowledge.topk
        self.period = cfg.knowledge.period
        self.round, self.switched, self.means = -1, False, {}
        self.round_hash: str | None = None
        self._expect_hash: str | None = None
        self.register_buffer("targets", torch.zeros(0, 0, dtype=torch.int32), persistent=False)
        self.register_buffer("pos", torch.zeros(0, 0, dtype=torch.int32), persistent=False)

    def loss(self, model: Student, batch: Batch) -> torch.Tensor:
        if self.round < 0:
            raise RuntimeError("HetCompObjective.loss before set_knowledge (no targets loaded)")
        a, c = model.user_side(batch.users), model.item_side()
        pos = self.pos[batch.rows].long()
        targets = self.targets[batch.rows].long()
        if not self.switched:
            targets = targets[:, : self.lo_topk]  # L_O's T_u: its first lo_topk items, the rest in the tail
        fn = losses.l_f if self.switched else losses.l_o
        per_user = fn(
            a, c, pos, targets, batch.train_rows, batch.train_items, self.clamp, self.tail_fn(batch)
        )
        return (self.lf_scale if self.switched else self.lo_scale) * per_user.sum()

    def final_phase(self) -> bool:
        return self.switched  # L_F on the final knowledge; L_O's plateaus end at the next DKC round

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
