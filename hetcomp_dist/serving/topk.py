"""Top-K items with per-user exclusion and their scores: the one search that `recommend` and the
serving bundle share, so both give the same answer for the same user.

Exact index kinds (``flat``, ``blocked``, ``pruned``) all use `BlockedFlatIndex`: FAISS flat search,
then float64 rescoring ordered by (score desc, item asc), i.e. a brute-force top-K with ties by item
id. ``ivf`` / ``hnsw`` are FAISS's approximate indexes (`retrieval.build_index`).
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist.config import EvalConfig
from hetcomp_dist.evaluation.faiss_exact import PAD, BlockedFlatIndex
from hetcomp_dist.evaluation.retrieval import index_for, search_excluding

EXACT_KINDS = ("flat", "blocked", "pruned")


def build_search_index(item_vecs: np.ndarray, metric: str, cfg: EvalConfig):
    """The index over `item_vecs` (n, d) for `cfg.index` (exact kinds: `BlockedFlatIndex`)."""
    if cfg.index in EXACT_KINDS:
        return BlockedFlatIndex(item_vecs, metric)
    return index_for(item_vecs, metric, cfg)


def scores_of(user_vecs: np.ndarray, item_vecs: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """(B, k) float32 scores of the listed items (PAD: NaN), computed in float64 then rounded.

    Args:
        user_vecs: (B, d) queries.
        item_vecs: (n, d) the index's item vectors.
        ids: (B, k) rows of `item_vecs`, PAD-padded.
        metric: "ip" (u.v) or "l2" (-|u - v|^2).
    """
    u = np.asarray(user_vecs, np.float64)[:, None, :]
    v = np.asarray(item_vecs, np.float64)[np.maximum(ids, 0)]
    s = (u * v).sum(-1) if metric == "ip" else -((u - v) ** 2).sum(-1)
    out = s.astype(np.float32)
    out[ids == PAD] = np.nan
    return out


def topk(
    index,
    item_vecs: np.ndarray,
    metric: str,
    user_vecs: np.ndarray,
    k: int,
    ex_off: np.ndarray,
    ex_val: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of the index per user, excluding each row's CSR set, with their scores.

    Returns:
        ((B, k) int32 item rows best first, PAD-padded; (B, k) float32 scores, NaN at PAD).
    """
    q = np.ascontiguousarray(user_vecs, dtype=np.float32)
    ids = search_excluding(index, q, k, ex_off.astype(np.int64), ex_val.astype(np.int64))
    return ids, scores_of(q, item_vecs, ids, metric)
