"""Evaluation of a rank's own users during training, merged over ranks.

Each rank evaluates the users it owns with the one evaluation function of the project
(`evaluate_embeddings(..., users=(lo, hi))`: FAISS over the student's item vectors, valid excludes
train ∪ test, test excludes train ∪ valid) and gets `MetricSums` states back; the trainer
all-reduces them, so every rank sees the same means and takes the same early-stopping decision.
Only the rank's own user rows need to be current: the others are zeros and never read.
"""

from __future__ import annotations

import numpy as np
import torch

from hetcomp_dist.config import EvalConfig
from hetcomp_dist.evaluation.evaluate import evaluate_embeddings
from hetcomp_dist.evaluation.metrics import MetricSums
from hetcomp_dist.student import distributed

SPLITS = ("valid", "test")


def range_sums(
    run: str, own: np.ndarray, lo: int, n_users: int, items: np.ndarray, metric: str, cfg: EvalConfig
) -> dict[str, dict]:
    """MetricSums states {"valid": ..., "test": ...} of users [lo, lo + len(own)).

    Args:
        own: (hi - lo, d) retrieval vectors of the rank's users.
        items: (n_items, d) item vectors.
        metric: "ip" or "l2".
    """
    user = np.zeros((n_users, own.shape[1]), dtype=np.float32)
    user[lo : lo + len(own)] = own
    out = evaluate_embeddings(
        run,
        user,
        items,
        metric,
        cfg,
        SPLITS,
        users=(lo, lo + len(own)),
        distributed=False,
        where="student embeddings",
    )
    return out["sums"]


def reduce_means(
    sums: dict[str, dict], ks: tuple[int, ...], device: torch.device
) -> dict[str, dict[str, float]]:
    """All-reduce per-rank metric sums; every rank gets the same means {"valid": {...}, "test": {...}}."""
    keys = [f"{m}@{k}" for k in ks for m in ("R", "N")]
    vec = torch.tensor(
        [[sums[s]["count"]] + [sums[s][k] for k in keys] for s in SPLITS], dtype=torch.float64, device=device
    )
    distributed.all_reduce_(vec)
    vec = vec.cpu().numpy()
    out = {}
    for i, split in enumerate(SPLITS):
        ms = MetricSums.from_state({"count": int(round(vec[i, 0])), **dict(zip(keys, vec[i, 1:]))}, ks)
        out[split] = ms.means()
    return out
