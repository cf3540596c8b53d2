"""The rank-importance ensemble g (METHOD.md §3): targets T_u and the observed-item set P+.

For one user, teacher x contributes A = w_x * exp(-r/T) to the item at 0-based rank r of its list;
E_u(i) = sum_x A and the result is the union of the lists ordered by E_u descending, ties broken by
the smaller item id. Only the union of the lists is touched: a batch is a (B, M*L) block, never a
(B, n_items) one.

Vectorisation, per row of a (B, M*L) block: (1) sort the integer keys ``item << b | tag`` (tag = the
rank r, or r*M + x with per-teacher weights; 32-bit whenever it fits) to group each item's entries;
(2) sum fixed-point rank importances per item as differences of a running sum (exact integer
arithmetic: items with the same ranks get identical scores, so the tie rule is exact); (3) sort one
packed int64 per unique item, ``(max - score) << c | column``, whose column order is item order.
"""

from __future__ import annotations

import numpy as np

PAD = -1


def _as_weights(weights: np.ndarray | None, m: int) -> np.ndarray:
    if weights is None or len(weights) == 0:
        return np.ones(m, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {m} finite numbers >= 0, not all 0 (one per teacher), got {w!r}")
    return w


def key_dtype(max_key: int) -> type:
    """int32 when every key fits (row sorts run ~2x faster), else int64."""
    return np.int32 if int(max_key) < 2**31 else np.int64


def _score_table(L: int, M: int, temperature: float, w: np.ndarray, cbits: int) -> tuple[np.ndarray, int]:
    """Integer rank importances: round(w_x exp(-r/T) 2^sbits / sum(w)), laid out by tag (r or r*M + x).

    Fixed-point scores make an item's sum exact and order-free (equal rank sets give equal scores: the
    tie rule is exact), and leave `cbits` low bits of an int64 for the column in the packed sort key.
    The resolution, sum(w) 2^-sbits with sbits = 62 - cbits (~1e-15 for M*L = 600), is as fine as a
    float64 sum near 1.
    """
    sbits = 62 - cbits
    scale = 2.0 ** sbits / float(w.sum())  # a sum may exceed 2^sbits by M/2 rounding units: still fits
    A = np.exp(-np.arange(L, dtype=np.float64) / temperature)
    if np.all(w == w[0]):
        return np.round(A * w[0] * scale).astype(np.int64), sbits
    return np.round((A[:, None] * w[None, :]).ravel() * scale).astype(np.int64), sbits


def ensemble_topk(lists: np.ndarray, k: int, temperature: float = 10.0,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Rank-importance ensemble g.

    Args:
        lists: (B, M, L) int item ids per user per teacher, best first, -1 padded. An item is expected
            at most once per teacher list.
        k: length of the result.
        temperature: T of A = exp(-r/T) for the 0-based rank r < L.
        weights: (M,) non-negative per-teacher w_x; None (or empty) = all 1.

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
    C = M * L
    cbits = max(1, (C - 1).bit_length())  # a column index within a row
    table, sbits = _score_table(L, M, temperature, w, cbits)
    uniform = len(table) == L
    tbits = max(1, ((L if uniform else C) - 1).bit_length())  # the tag: rank r, or r*M + x
    tag = np.tile(np.arange(L), M) if uniform else (np.arange(L)[None, :] * M + np.arange(M)[:, None]).ravel()
    dt, udt = (np.int32, np.uint32) if key_dtype((int(lists.max()) + 1) << tbits) is np.int32 else (np.int64, np.uint64)

    # 1. group each row's entries by item: sort the keys item << tbits | tag as unsigned, so the pads
    #    (item -1, negative keys) sort last
    keys = ((lists.reshape(B, C).astype(dt) << dt(tbits)) | tag.astype(dt)[None, :]).view(udt)
    keys = np.sort(keys, axis=1).view(dt)
    item = keys >> dt(tbits)  # -1 for pads
    val = np.take(table, keys & dt((1 << tbits) - 1), mode="clip")
    # 2. an item's score = the running sum at its last entry minus the one at the previous item's
    csum = np.cumsum(val, axis=1)
    last = item >= 0
    last[:, :-1] &= item[:, :-1] != item[:, 1:]
    flat = np.flatnonzero(last)
    if len(flat) == 0:
        return out
    n_per_row = np.count_nonzero(last, axis=1)
    row = np.repeat(np.arange(B), n_per_row)
    row_start = np.zeros(B, dtype=np.int64)
    np.cumsum(n_per_row[:-1], out=row_start[1:])
    cs = csum.ravel()[flat]
    prev = np.empty_like(cs)
    prev[0] = 0
    prev[1:] = cs[:-1]
    prev[row_start[n_per_row > 0]] = 0
    score = cs - prev
    u_max = int(n_per_row.max())
    col = np.arange(len(flat)) - row_start[row]
    packed = np.full((B, u_max), np.iinfo(np.int64).max, dtype=np.int64)
    packed[row, col] = ((np.int64(1) << sbits) - score) << cbits | col
    items_c = np.full((B, u_max), PAD, dtype=np.int32)
    items_c[row, col] = item.ravel()[flat]
    kk = min(k, u_max)
    top = np.sort(packed, axis=1)[:, :kk]
    empty = top == np.iinfo(np.int64).max
    top_items = np.take_along_axis(items_c, np.where(empty, 0, top & ((1 << cbits) - 1)), axis=1)
    out[:, :kk] = np.where(empty, PAD, top_items)
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
