"""Recall@K and NDCG@K (binary gain) under the paper's protocol, vectorised over users."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hetcomp_dist.evaluation import kernels


def recall_ndcg(
    topk: np.ndarray,
    gt_offsets: np.ndarray,
    gt_values: np.ndarray,
    ks: Iterable[int] = (10, 50),
    n_items: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-user metrics of ranked lists against ground-truth sets.

    Recall@K = |topK ∩ GT| / |GT|; NDCG@K = DCG / IDCG with gain 1, discount 1/log2(t+2) at 0-based
    position t, and IDCG over min(|GT|, K) positions. Users with an empty GT get NaN.

    Args:
        topk: (B, Kmax) ranked item ids (PAD = -1 never matches).
        gt_offsets, gt_values: CSR ground truth over the B rows.
        ks: cut-offs, each <= Kmax.

    Returns:
        {"R@k": (B,), "N@k": (B,)} float64 arrays.
    """
    B, kmax = topk.shape
    n_items = int(max(topk.max(initial=0), gt_values.max(initial=0)) + 1) if n_items is None else n_items
    n_gt = np.diff(gt_offsets)
    if max(topk.max(initial=-1), gt_values.max(initial=-1)) >= n_items:  # the kernel indexes by item id
        raise ValueError(f"item ids must be < n_items={n_items}")
    hit = kernels.hit_matrix(
        np.ascontiguousarray(topk), np.asarray(gt_offsets, np.int64), gt_values, np.zeros(n_items, np.uint8)
    )
    disc = 1.0 / np.log2(np.arange(kmax) + 2.0)
    ideal = np.concatenate([[0.0], np.cumsum(disc)])
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            if k > kmax:
                raise ValueError(f"cut-off {k} exceeds list length {kmax}")
            h = hit[:, :k]
            out[f"R@{k}"] = np.where(n_gt > 0, h.sum(1) / n_gt, np.nan)
            out[f"N@{k}"] = np.where(n_gt > 0, (h * disc[:k]).sum(1) / ideal[np.minimum(n_gt, k)], np.nan)
    return out


class MetricSums:
    """Streams per-user metrics into sums, so shards can be merged: mean = sum / count."""

    def __init__(self, ks: Iterable[int] = (10, 50)) -> None:
        self.ks = tuple(ks)
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in ("R", "N")}
        self.count = 0

    def add(self, per_user: dict[str, np.ndarray]) -> None:
        valid = ~np.isnan(next(iter(per_user.values())))
        self.count += int(valid.sum())
        for key, v in per_user.items():
            self.sums[key] += float(v[valid].sum())

    def merge(self, other: MetricSums) -> None:
        self.count += other.count
        for key, v in other.sums.items():
            self.sums[key] += v

    def to_state(self) -> dict:
        return {"count": self.count, **self.sums}

    @classmethod
    def from_state(cls, state: dict, ks: Iterable[int] = (10, 50)) -> MetricSums:
        m = cls(ks)
        m.count = int(state["count"])
        for key in m.sums:
            m.sums[key] = float(state[key])
        return m

    def means(self) -> dict[str, float]:
        return {key: (v / self.count if self.count else float("nan")) for key, v in self.sums.items()}


def row_overlaps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """(B,) |got ∩ want| / |want| per row of two (B, k) item lists, PAD (-1) ignored on both sides (a row
    of `want` with no item gives 1)."""
    rows = []
    for g, w in zip(got, want):
        w = w[w >= 0]
        rows.append(len(np.intersect1d(g[g >= 0], w)) / max(1, len(w)))
    return np.asarray(rows, dtype=np.float64)


def list_overlap(got: np.ndarray, want: np.ndarray) -> float:
    """Mean over rows of `row_overlaps` (1 without rows): how much of a reference top-k another top-k
    keeps."""
    rows = row_overlaps(got, want)
    return float(rows.mean()) if len(rows) else 1.0
