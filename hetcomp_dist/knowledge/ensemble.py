"""The rank-importance ensemble g (METHOD.md §3): targets T_u and the observed-item set P+.

For one user, teacher x contributes A = w_x * exp(-r/T) to the item at 0-based rank r of its list;
E_u(i) = sum_x A and the result is the union of the lists ordered by E_u descending, ties broken by
the smaller item id. Only the union of the lists is touched: a batch is a (B, M*L) block, never a
(B, n_items) one.

Vectorisation: each row's (item, rank, teacher) entries are encoded as one int64 key
``item * (M*L) + r*M + x`` and sorted per row, which groups every item's entries in ascending rank
order (then teacher order). An item's terms are summed in that canonical order, so two items with the
same ranks get bit-identical scores and the tie rule is exact. A second, stable, descending sort by
score over the item-ordered columns gives "score desc, item asc".
"""

from __future__ import annotations

import numpy as np
import torch

PAD = -1


def _as_weights(weights: np.ndarray | None, m: int) -> np.ndarray:
    if weights is None or len(weights) == 0:
        return np.ones(m, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be {m} finite numbers (one per teacher), got {w!r}")
    return w


def _row_sort(a: np.ndarray, descending: bool = False, stable: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sorts each row of a 2-D array (torch.sort is multithreaded); returns (values, indices)."""
    vals, idx = torch.sort(torch.from_numpy(a), dim=1, descending=descending, stable=stable)
    return vals.numpy(), idx.numpy()


def ensemble_topk(lists: np.ndarray, k: int, temperature: float = 10.0,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Rank-importance ensemble g.

    Args:
        lists: (B, M, L) int item ids per user per teacher, best first, -1 padded. An item is expected
            at most once per teacher list.
        k: length of the result.
        temperature: T of A = exp(-r/T) for the 0-based rank r < L.
        weights: (M,) per-teacher w_x; None (or empty) = all 1.

    Returns:
        (B, k) int32 items by E_u = sum_x w_x A_x descending, ties broken by smaller item id, -1 padded
        when the union of the lists has fewer than k items.
    """
    lists = np.asarray(lists)
    if lists.ndim != 3:
        raise ValueError(f"lists must be (B, M, L), got shape {lists.shape}")
    B, M, L = lists.shape
    w = _as_weights(weights, M)
    out = np.full((B, k), PAD, dtype=np.int32)
    if B == 0 or M * L == 0 or k == 0:
        return out
    ml = M * L
    # term value of slot (r, x), laid out as r*M + x (rank-major, the canonical summation order)
    table = (np.exp(-np.arange(L, dtype=np.float64) / temperature)[:, None] * w[None, :]).ravel()
    slot = (np.arange(L, dtype=np.int64)[None, :] * M + np.arange(M, dtype=np.int64)[:, None]).ravel()  # (M*L,) in (x, r) order
    items = lists.reshape(B, ml).astype(np.int64)
    valid = items >= 0
    keys = np.where(valid, items * ml + slot[None, :], np.iinfo(np.int64).max)
    keys, _ = _row_sort(keys)
    valid = keys != np.iinfo(np.int64).max
    item_s = np.where(valid, keys // ml, PAD)
    val_s = np.where(valid, table[np.where(valid, keys % ml, 0)], 0.0)

    # per item: sum of its terms, sequentially in canonical order, stored at the item's first column
    acc = val_s.copy()
    for j in range(1, ml):
        same = (item_s[:, j:] == item_s[:, :-j]) & valid[:, j:]
        if not same.any():
            break
        acc[:, :-j] += np.where(same, val_s[:, j:], 0.0)
    first = valid.copy()
    first[:, 1:] &= item_s[:, 1:] != item_s[:, :-1]
    score = np.where(first, acc, -np.inf)

    # columns are item-ascending, so a stable descending sort by score breaks ties by smaller item id
    kk = min(k, ml)
    score_s, order = _row_sort(score, descending=True, stable=True)
    top = np.take_along_axis(item_s, order[:, :kk], axis=1)
    top[~np.isfinite(score_s[:, :kk])] = PAD
    out[:, :kk] = top
    return out


def ensemble_topk_csr(csrs: list[tuple[np.ndarray, np.ndarray]], k: int, temperature: float = 10.0,
                      weights: np.ndarray | None = None, max_cells: int = 1 << 24) -> np.ndarray:
    """`ensemble_topk` over variable-length lists given as one CSR per teacher (e.g. observed items).

    Users are grouped by their longest list (powers of two), so one heavy user does not widen the dense
    block of the whole batch; each group is cut into blocks of at most ``max_cells`` entries.

    Args:
        csrs: M pairs (offsets (B+1,), values), one per teacher, over the same B users, best first.
        k: length of the result.
        temperature, weights: as in `ensemble_topk`.
        max_cells: bound on B_block * M * L per dense block (memory).

    Returns:
        (B, k) int32, -1 padded.
    """
    M = len(csrs)
    B = len(csrs[0][0]) - 1
    out = np.full((B, k), PAD, dtype=np.int32)
    if B == 0:
        return out
    lengths = np.stack([np.diff(off) for off, _ in csrs], axis=1)  # (B, M)
    longest = lengths.max(axis=1)
    caps = np.where(longest > 0, 2 ** np.ceil(np.log2(np.maximum(longest, 1))).astype(np.int64), 0)
    for cap in np.unique(caps):
        if cap == 0:
            continue
        rows_all = np.nonzero(caps == cap)[0]
        step = max(1, int(max_cells // (M * cap)))
        for s in range(0, len(rows_all), step):
            rows = rows_all[s: s + step]
            dense = np.full((len(rows), M, int(cap)), PAD, dtype=np.int32)
            for x, (off, val) in enumerate(csrs):
                n = lengths[rows, x]
                pos = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
                src = np.repeat(off[rows], n) + pos
                dense[np.repeat(np.arange(len(rows)), n), x, pos] = val[src]
            out[rows] = ensemble_topk(dense, k, temperature, weights)
    return out
