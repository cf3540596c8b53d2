"""The rank-importance ensemble g (METHOD.md §3): targets T_u and the observed-item set P+.

For one user, teacher x contributes A = w_x * exp(-r/T) to the item at 0-based rank r of its list;
E_u(i) = sum_x A and the result is the union of the lists ordered by E_u descending, ties broken by
the smaller item id. Only the union of the lists is touched, never a dense (users x items) row.

Compiled per-user kernels (numba): each user's entries are summed per item -- in an array indexed
by item id when the caller gives the catalogue size n_items (<= DENSE_MAX_ITEMS), else in a small
hash table (`hashtable` has both) -- then `select_top` orders the best k (score, item) pairs by a
bucket sort on the score's magnitude and an insertion sort within buckets. Scores are fixed-point
integers, round(w_x exp(-r/T) 2^60 / sum(w)): an item's sum is exact and independent of the order
of its terms, so equal rank sets give identical scores and the tie rule is exact (a float sum would
depend on the order). The resolution, sum(w) 2^-60, is finer than a float64 sum near 1.

Kernels run users in parallel (`numba.prange` over one contiguous chunk of users per thread, each
with its own buffers; the caller sets the thread count, one inside a 1-CPU Ray task); each user's
result depends on that user only, so the output is the same for any thread count.
"""

from __future__ import annotations

import numba
import numpy as np

from hetcomp_dist.knowledge import hashtable as ht
from hetcomp_dist.knowledge.prefetch import prefetch_row

PAD = -1
SCORE_BITS = 60  # a user's total score <= 2^60 + M/2 rounding units: fits int64 with room
DENSE_MAX_ITEMS = 1 << 22  # dense score arrays up to 32 MB per thread; larger catalogues hash


def dense_size(n_items: int | None) -> int:
    """Length of the dense per-thread score array for a catalogue of n_items; 0 = use the hash table
    (n_items unknown, or past DENSE_MAX_ITEMS)."""
    if n_items is None:
        return 0
    n = int(n_items)
    if n < 0:
        raise ValueError(f"n_items must be >= 0, got {n}")
    return n if 0 < n <= DENSE_MAX_ITEMS else 0


def check_items(bad: np.ndarray, n_items: int | None) -> None:
    """Raises for an item id >= n_items met by a dense kernel (bad: each chunk's largest such id, or -1)."""
    worst = int(np.max(bad, initial=-1))
    if worst >= 0:
        raise ValueError(
            f"item id {worst} is >= n_items = {n_items}: the lists hold ids outside the catalogue "
            f"(pass the catalogue's n_items, or None for no bound)"
        )


def as_weights(weights: np.ndarray | None, m: int) -> np.ndarray:
    """(M,) float64 per-teacher weights: all 1 for None or empty; checked otherwise."""
    if weights is None or len(weights) == 0:
        return np.ones(m, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {m} finite numbers >= 0, not all 0 (one per teacher), got {w!r}")
    return w


def score_table(L: int, w: np.ndarray, temperature: float) -> np.ndarray:
    """(M, L) int64 fixed-point rank importances round(w_x exp(-r/T) 2^SCORE_BITS / sum(w)), one row per
    teacher (a kernel reads teacher x's row along its list).

    Ranks past T ln(2^61 w_x / sum(w)) (~410 for T = 10, 6 equal weights) round to 0: items seen only
    that deep tie, by id -- only long lists (observed items of heavy users) reach them, and P+ keeps 10.
    """
    scale = 2.0**SCORE_BITS / float(w.sum())
    A = np.exp(-np.arange(L, dtype=np.float64) / temperature)
    return np.ascontiguousarray(np.round(w[:, None] * A[None, :] * scale).astype(np.int64))


# ---------------------------------------------------------------------------------- the kernels
SUB_BITS = 4  # score buckets per octave = 2^SUB_BITS: a bucket spans < 6.25 % of its scores
N_BUCKETS = 64 << SUB_BITS  # octaves 0..61 of a score < 2^62, and bucket 0 for score 0
_BUCKET_BASE = (1023 << SUB_BITS) - 1  # float64 exponent bias: a score of 1 lands in bucket 1 << SUB_BITS


@numba.njit(cache=True, inline="always")
def _worse(s1, i1, s2, i2):
    """(score s1, item i1) ranks after (s2, i2): a lower score, or the same score and a larger id."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@numba.njit(cache=True)
def workspace(entries, n_dense):
    """One thread's buffers for users of at most `entries` list entries: the score table (keys, vals,
    used slots: a hash table, or with n_dense > 0 no keys and one score per item id < n_dense) and
    the buffers of `select_top`."""
    n = max(entries, 1)
    if n_dense > 0:
        keys, vals = np.empty(0, dtype=np.int32), np.zeros(n_dense, dtype=np.int64)
    else:
        bits = ht.table_bits(n, 2)
        keys, vals = np.full(1 << bits, ht.EMPTY, dtype=np.int32), np.zeros(1 << bits, dtype=np.int64)
    fbuf = np.empty(n, dtype=np.float64)
    return (
        keys,
        vals,
        np.empty(n, dtype=np.int64),
        fbuf,
        fbuf.view(np.int64),
        np.empty(n, dtype=np.int32),
        np.zeros(N_BUCKETS, dtype=np.int32),
        np.empty(n, dtype=np.int64),
        np.empty(n, dtype=np.int32),
        np.empty(n, dtype=np.int64),
        np.empty(n, dtype=np.int32),
    )


@numba.njit(cache=True)
def select_top(ws, n_used, out_row, dense):
    """out_row[:] = the best len(out_row) items of the table by (score desc, id asc), PAD-filled,
    and the table emptied (dense: the table of `add_dense`, whose marker unit is taken off).

    A bucket sort then an insertion sort, O(entries + k) for the score spreads of rank importances
    (not a heap: on rank-importance scores its comparisons are unpredictable branches): each score's bucket
    is the exponent and top SUB_BITS mantissa bits of its float64 value (monotone in the score);
    counting from the top bucket down finds the bucket where the best k end, the entries of that
    bucket and above are placed in bucket order (the rest after them, unsorted), and an insertion
    sort on the exact (score, id) keys only reorders entries within a bucket. The first pass copies
    each (score, item) out of the table and empties its slot, so the later passes read two dense
    arrays; the placement has no branch on the cut, which would be mispredicted for each entry near it.
    """
    keys, vals, used, fbuf, fbits, bucket, counts, ss, si, cs, ci = ws
    k = len(out_row)
    lo, hi = N_BUCKETS, 0
    for j in range(n_used):
        h = np.uintp(used[j])  # unsigned indices throughout: no negative-index fix-up per access
        sc = vals[h]
        if dense:
            sc -= 1
            ci[j] = h
        else:
            ci[j] = keys[h]
            keys[h] = ht.EMPTY
        vals[h] = 0
        cs[j] = sc
        fbuf[j] = sc  # int64 -> float64 rounds monotonically; read back as its bits
        bk = max((fbits[j] >> (52 - SUB_BITS)) - _BUCKET_BASE, 0)
        bucket[j] = bk
        counts[np.uintp(bk)] += 1
        lo, hi = min(lo, bk), max(hi, bk)
    total, cut = 0, lo
    for bk in range(hi, lo - 1, -1):  # counts become start positions, best bucket first
        c = counts[np.uintp(bk)]
        counts[np.uintp(bk)] = total
        total += c
        if total >= k:
            cut = bk
            break
    floor = cut  # entries below the cut bucket go to one counter past the best buckets: no branch
    if cut > lo:
        floor = cut - 1
        counts[np.uintp(floor)] = total
    for j in range(n_used):
        c = np.uintp(max(bucket[j], floor))
        p = np.uintp(counts[c])
        counts[c] = p + 1
        ss[p], si[p] = cs[j], ci[j]
    counts[lo : hi + 1] = 0
    for a in range(1, total):  # total: the entries of the buckets that hold the best k
        s, it = ss[a], si[a]
        q = a - 1
        while q >= 0 and _worse(ss[np.uintp(q)], si[np.uintp(q)], s, it):
            ss[np.uintp(q + 1)], si[np.uintp(q + 1)] = ss[np.uintp(q)], si[np.uintp(q)]
            q -= 1
        ss[np.uintp(q + 1)], si[np.uintp(q + 1)] = s, it
    kk = min(k, total)
    for p in range(kk):
        out_row[p] = si[p]
    for p in range(kk, k):
        out_row[p] = PAD


@numba.njit(cache=True, error_model="numpy")
def _g_states_rows(lists, state, rows, table, out, n_dense, lo, hi):
    """`g_states_kernel` for users lo..hi-1 (one thread's chunk); returns the largest item id >= n_dense
    met (dense table), else -1."""
    M, L = lists.shape[1], lists.shape[3]
    ws = workspace(M * L, n_dense)
    keys, vals, used = ws[0], ws[1], ws[2]
    bits = ht.table_bits(M * L, 2)
    nd = np.uint32(n_dense)
    bad = -1
    for b in range(lo, hi):
        if not rows[b]:
            continue
        if b + 1 < hi and rows[b + 1]:
            for x in range(M):
                prefetch_row(lists, b + 1, x, state[b + 1, x], L)
        n_used = 0
        for x in range(M):
            row, trow = lists[b, x, state[b, x]], table[x]
            for r in range(L):
                item = row[r]
                if np.uint32(item) < nd:  # dense (nd = 0 for the hash table); a PAD wraps to 2^32 - 1
                    n_used = ht.add_dense(vals, used, n_used, np.uintp(item), trow[r])
                elif item >= 0:
                    if n_dense == 0:
                        n_used = ht.add(keys, vals, used, n_used, bits, item, trow[r])
                    else:
                        bad = max(bad, item)  # reported by the caller
        select_top(ws, n_used, out[b], n_dense > 0)
    return bad


@numba.njit(cache=True, parallel=True, error_model="numpy")
def g_states_kernel(lists, state, rows, table, out, n_dense, threads):
    """out[b] = g of lists[b, x, state[b, x]] over x, for every b with rows[b]; other rows untouched.

    lists: (B, M, S, L) int32, any strides; state: (B, M) int64; rows: (B,) bool;
    table: (M, L) int64 fixed-point importances (`score_table`); out: (B, k) int32; n_dense: `dense_size`.
    Returns each chunk's largest item id >= n_dense (dense table only; -1 = none): see `check_items`.
    """
    B = lists.shape[0]
    n_chunks = max(1, min(threads, B))
    bad = np.full(n_chunks, -1, dtype=np.int64)
    # the chunk loop lives in a plain njit function: numba compiles a parfor body into slower code
    for c in numba.prange(n_chunks):
        bad[c] = _g_states_rows(
            lists, state, rows, table, out, n_dense, c * B // n_chunks, (c + 1) * B // n_chunks
        )
    return bad


@numba.njit(cache=True, error_model="numpy")
def _g_csr_rows(offsets, values, table, max_entries, out, n_dense, lo, hi):
    """`_g_csr_kernel` for users lo..hi-1 (one thread's chunk); returns as `_g_states_rows`."""
    M = offsets.shape[0]
    ws = workspace(max_entries, n_dense)
    keys, vals, used = ws[0], ws[1], ws[2]
    nd = np.uint32(n_dense)
    bad = -1
    for b in range(lo, hi):
        entries = 0
        for x in range(M):
            entries += offsets[x, b + 1] - offsets[x, b]
        bits = ht.table_bits(entries, 2)  # small users stay in cache beside a heavy one's table
        n_used = 0
        for x in range(M):
            row, trow = values[offsets[x, b] : offsets[x, b + 1]], table[x]
            for r in range(len(row)):
                item = row[r]
                if np.uint32(item) < nd:  # as in `_g_states_rows`
                    n_used = ht.add_dense(vals, used, n_used, np.uintp(item), trow[r])
                elif item >= 0:
                    if n_dense == 0:
                        n_used = ht.add(keys, vals, used, n_used, bits, item, trow[r])
                    else:
                        bad = max(bad, item)  # reported by the caller
        select_top(ws, n_used, out[b], n_dense > 0)
    return bad


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _g_csr_kernel(offsets, values, table, max_entries, out, n_dense, threads):
    """out[b] = g of the M lists values[offsets[x, b]:offsets[x, b+1]] (offsets: (M, B+1) into the
    concatenated values, table: (M, L_max)); each user's hash table is a prefix sized by its entries."""
    B = offsets.shape[1] - 1
    n_chunks = max(1, min(threads, B))
    bad = np.full(n_chunks, -1, dtype=np.int64)
    for c in numba.prange(n_chunks):
        bad[c] = _g_csr_rows(
            offsets, values, table, max_entries, out, n_dense, c * B // n_chunks, (c + 1) * B // n_chunks
        )
    return bad


# ------------------------------------------------------------------------------------ the API
def ensemble_topk(
    lists: np.ndarray,
    k: int,
    temperature: float = 10.0,
    weights: np.ndarray | None = None,
    n_items: int | None = None,
) -> np.ndarray:
    """Rank-importance ensemble g.

    Args:
        lists: (B, M, L) int item ids per user per teacher, best first, -1 padded (any strides). An
            item is expected at most once per teacher list.
        k: length of the result.
        temperature: T of A = exp(-r/T) for the 0-based rank r < L.
        weights: (M,) non-negative per-teacher w_x; None (or empty) = all 1.
        n_items: the catalogue size, when known: item ids are < n_items (ValueError otherwise), and
            scores are summed in a dense per-item array (faster; 8 bytes x n_items per thread, up to
            DENSE_MAX_ITEMS). None: a hash table, no bound on ids. The result is the same.

    Returns:
        (B, k) int32 items by E_u = sum_x w_x A_x descending, ties broken by smaller item id, -1 padded
        when the union of the lists has fewer than k items.
    """
    lists = np.asarray(lists)
    if lists.ndim != 3:
        raise ValueError(f"lists must be (B, M, L), got shape {lists.shape}")
    B, M, L = lists.shape
    w = as_weights(weights, M)
    out = np.full((B, k), PAD, dtype=np.int32)
    if B == 0 or M * L == 0 or k == 0:
        return out
    check_items(
        g_states_kernel(
            lists.astype(np.int32, copy=False)[:, :, None, :],
            np.zeros((B, M), dtype=np.int64),
            np.ones(B, dtype=bool),
            score_table(L, w, temperature),
            out,
            dense_size(n_items),
            numba.get_num_threads(),
        ),
        n_items,
    )
    return out


def ensemble_topk_csr(
    csrs: list[tuple[np.ndarray, np.ndarray]],
    k: int,
    temperature: float = 10.0,
    weights: np.ndarray | None = None,
    n_items: int | None = None,
) -> np.ndarray:
    """`ensemble_topk` over variable-length lists given as one CSR per teacher (e.g. observed items).

    Memory is the CSR itself plus one score table per thread: a hash table sized by the heaviest
    user's entries, or the dense array of n_items.

    Args:
        csrs: M pairs (offsets (B+1,), values), one per teacher, over the same B users, best first.
        k: length of the result.
        temperature, weights, n_items: as in `ensemble_topk`.

    Returns:
        (B, k) int32, -1 padded.
    """
    M = len(csrs)
    B = len(csrs[0][0]) - 1
    out = np.full((B, k), PAD, dtype=np.int32)
    if B == 0 or k == 0:
        return out
    w = as_weights(weights, M)
    lengths = np.stack([np.diff(off) for off, _ in csrs])  # (M, B)
    base = np.concatenate([[0], np.cumsum([len(val) for _, val in csrs])[:-1]])
    offsets = np.stack([np.asarray(off, dtype=np.int64) + b for (off, _), b in zip(csrs, base)])
    values = np.concatenate([np.asarray(val, dtype=np.int32) for _, val in csrs])
    longest = int(lengths.max(initial=0))
    check_items(
        _g_csr_kernel(
            offsets,
            values,
            score_table(max(longest, 1), w, temperature),
            int(lengths.sum(axis=0).max()),
            out,
            dense_size(n_items),
            numba.get_num_threads(),
        ),
        n_items,
    )
    return out
