"""Top-K retrieval with per-user exclusion: one FAISS factory, and a torch path for any scorer.

Exclusion sets are CSR arrays over the batch rows: row ``b`` excludes
``values[offsets[b]:offsets[b+1]]``. Results are ``(B, k)`` int32 item ids, best first, right-padded
with -1 when a user has fewer than ``k`` candidates. Nothing here allocates more than ``(B, n_items)``.
"""

from __future__ import annotations

from typing import Callable

import faiss
import numpy as np
import torch

PAD = -1


def build_index(item_emb: np.ndarray, metric: str = "ip", kind: str = "flat", *, ivf_nlist: int = 1024,
                ivf_nprobe: int = 32, hnsw_m: int = 32, hnsw_ef_search: int = 256) -> faiss.Index:
    """The one FAISS factory: exact flat index by default, IVF / HNSW for large catalogues.

    Args:
        item_emb: (n_items, d) item vectors.
        metric: "ip" (score = dot product) or "l2" (score = -squared distance).
        kind: "flat" | "ivf" | "hnsw".
    """
    x = np.ascontiguousarray(item_emb, dtype=np.float32)
    n, d = x.shape
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be ip or l2, got {metric!r}")
    if kind == "flat":
        index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = max(1, min(ivf_nlist, n // 39))
        quant = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, fmetric)
        index.train(x)
        index.nprobe = min(ivf_nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, fmetric)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ValueError(f"index kind must be flat, ivf or hnsw, got {kind!r}")
    index.add(x)
    return index


def _encode(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return rows.astype(np.int64) * (n_items + 1) + (items.astype(np.int64) + 1)


def excluded_mask(cand: np.ndarray, ex_offsets: np.ndarray, ex_values: np.ndarray, n_items: int) -> np.ndarray:
    """(B, C) bool: cand[b, c] is in row b's exclusion set (vectorised membership, no user loop)."""
    B, C = cand.shape
    ex_rows = np.repeat(np.arange(B), np.diff(ex_offsets))
    ex_keys = np.unique(_encode(ex_rows, ex_values, n_items))
    keys = _encode(np.repeat(np.arange(B), C), cand.ravel(), n_items)
    return np.isin(keys, ex_keys, assume_unique=False).reshape(B, C)


def first_k_kept(cand: np.ndarray, drop: np.ndarray, k: int) -> np.ndarray:
    """(B, k): per row, the first k candidates not dropped (and not PAD), in order; PAD-filled."""
    keep = ~drop & (cand != PAD)
    rank = np.cumsum(keep, axis=1) - 1
    sel = keep & (rank < k)
    out = np.full((cand.shape[0], k), PAD, dtype=np.int32)
    r, c = np.nonzero(sel)
    out[r, rank[r, c]] = cand[r, c]
    return out


def search_excluding(index: faiss.Index, user_vecs: np.ndarray, k: int, ex_offsets: np.ndarray,
                     ex_values: np.ndarray) -> np.ndarray:
    """Top-k items per user from a FAISS index, never returning an excluded item.

    Asks FAISS for k + |excluded| per row, grouping rows by exclusion size (powers of two) so one heavy
    user does not widen the search of the whole batch.

    Args:
        index: from `build_index`.
        user_vecs: (B, d) float32 query vectors.
        k: list length.
        ex_offsets, ex_values: CSR exclusion sets over the B rows.

    Returns:
        (B, k) int32 item ids best first, PAD (-1) where fewer than k items remain.
    """
    q = np.ascontiguousarray(user_vecs, dtype=np.float32)
    B, n_items = len(q), index.ntotal
    out = np.full((B, k), PAD, dtype=np.int32)
    if B == 0:
        return out
    counts = np.diff(ex_offsets)
    caps = np.where(counts > 0, 2 ** np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64), 0)
    for cap in np.unique(caps):
        rows = np.nonzero(caps == cap)[0]
        kk = int(min(k + cap, n_items))
        _, cand = index.search(q[rows], kk)
        sub_off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts[rows], out=sub_off[1:])
        sub_val = np.concatenate([ex_values[ex_offsets[r]: ex_offsets[r + 1]] for r in rows]) if cap else np.zeros(0, np.int32)
        cand = cand.astype(np.int32)
        out[rows] = first_k_kept(cand, excluded_mask(cand, sub_off, sub_val, n_items), k)
    return out


def topk_from_scores(scores: torch.Tensor, k: int, ex_offsets: np.ndarray, ex_values: np.ndarray) -> np.ndarray:
    """Top-k of a (B, n_items) score block after masking excluded items (any model, any score).

    Returns:
        (B, k) int32 item ids best first, PAD where fewer than k items remain.
    """
    B, n_items = scores.shape
    s = scores.detach().float().clone()
    rows = torch.from_numpy(np.repeat(np.arange(B), np.diff(ex_offsets)))
    s[rows, torch.from_numpy(ex_values.astype(np.int64))] = float("-inf")
    kk = min(k, n_items)
    val, idx = torch.topk(s, kk, dim=1)
    idx = idx.to(torch.int32).numpy()
    idx[~torch.isfinite(val).numpy()] = PAD
    out = np.full((B, k), PAD, dtype=np.int32)
    out[:, :kk] = idx
    return out


def topk_scorer(score_fn: Callable[[np.ndarray], torch.Tensor], users: np.ndarray, k: int, ex_offsets: np.ndarray,
                ex_values: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """`topk_from_scores` over users in batches; score_fn maps (b,) user ids to (b, n_items) scores."""
    outs = []
    for s in range(0, len(users), batch_size):
        e = min(s + batch_size, len(users))
        o0, o1 = ex_offsets[s], ex_offsets[e]
        with torch.no_grad():
            scores = score_fn(users[s:e])
        outs.append(topk_from_scores(scores, k, ex_offsets[s:e + 1] - o0, ex_values[o0:o1]))
    return np.concatenate(outs) if outs else np.zeros((0, k), np.int32)
