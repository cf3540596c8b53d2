"""Fused CPU kernels for the exact tail log-sum-exp of `losses.tail_logsumexp` (float32, numba).

The tail is Σ_{j ∉ X_b} exp(clamp(a_b . c_j)) over the whole catalogue for every user b of a batch, and
its gradient. Blocked torch code runs a (items x users) block through memory several times: the product,
the clamp, exp, the zeroing of excluded entries, the sum, and again in the backward pass (twice more
where the clamp's zero derivative is applied). Here each item's row of B users is computed in one pass
held in registers: the d-term dot product, the clamp, exp2 from a degree-7 polynomial on [-1/2, 1/2]
scaled by 2^n built in the exponent bits (vectorised by LLVM, unlike a libm call), then the excluded
users zeroed and the row summed (forward), or reduced into the item's gradient and accumulated into the
users' (backward). The clamp costs the same whether or not a logit reaches it, so epochs past the clamp
run as fast as fresh ones.

Accuracy: the polynomial's relative error is below 2e-7 (under float32's rounding of the product
itself); sums run in float32 over 256 items at a time and then in float64.

Vectors come as tuples of rows (a (d, B) matrix as d rows of B): numba compiles one specialisation per d
and unrolls the d-term dot product inside the loop over users, which is what lets it vectorise.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

# 2^f = e^(f ln 2) on |f| <= 1/2 by its Taylor series to degree 7: remainder < (ln2 / 2)^8 / 8! < 5e-9
_P = tuple(np.float32(math.log(2.0) ** k / math.factorial(k)) for k in range(8))
P0, P1, P2, P3, P4, P5, P6, P7 = _P
_FLUSH = 255  # float32 partial sums are moved into float64 every 256 items


@nb.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _exp2_parts(x):
    """2^x = p * 2^n for |x| < 126: returns (p, the float32 bit pattern of 2^n as int32)."""
    n = np.floor(x + np.float32(0.5))
    f = x - n
    p = P7 * f + P6
    p = p * f + P5
    p = p * f + P4
    p = p * f + P3
    p = p * f + P2
    p = p * f + P1
    p = p * f + P0
    return p, (np.int32(n) + np.int32(127)) << np.int32(23)


@nb.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _exp_row(ar, cj, lim, keep_clipped, excluded, row, bits):
    """row[b] * view(bits[b]) = 2^clamp(cj . ar[:, b], ±lim); 0 for the `excluded` users, and where
    clipped unless keep_clipped."""
    D = len(ar)
    nlim = -lim
    for b in range(row.shape[0]):
        x = np.float32(0.0)
        for k in range(D):
            x += cj[k] * ar[k][b]
        keep = np.float32(1.0)
        if not keep_clipped:
            keep = np.float32(1.0) if (x >= nlim and x <= lim) else np.float32(0.0)
        x = min(max(x, nlim), lim)
        p, n = _exp2_parts(x)
        row[b] = p * keep
        bits[b] = n
    for b in excluded:
        row[b] = 0.0


@nb.njit(cache=True, nogil=True, fastmath=True)
def tail_sum(ar, c, ex_rows, bounds, lim, start, stop, z):
    """z[b] += Σ_{start <= j < stop, (b, j) not excluded} 2^clamp(c_j . ar[:, b], ±lim).

    Args:
        ar: d rows (B,) float32 of the user side in log2 units.
        c: (N, d) float32 item side.
        ex_rows: (nnz,) int64 excluded users, grouped by item: item j's are ex_rows[bounds[j]:bounds[j+1]].
        bounds: (N + 1,) int64.
        lim: the clamp in log2 units (< 126).
        start, stop: the items this call covers.
        z: (B,) float64 accumulator.
    """
    B = z.shape[0]
    row = np.empty(B, np.float32)
    bits = np.empty(B, np.int32)
    scale = bits.view(np.float32)
    zf = np.zeros(B, np.float32)
    for j in range(start, stop):
        _exp_row(ar, c[j], lim, True, ex_rows[bounds[j] : bounds[j + 1]], row, bits)
        for b in range(B):
            zf[b] += row[b] * scale[b]
        if (j - start) & _FLUSH == _FLUSH:
            for b in range(B):
                z[b] += zf[b]
                zf[b] = 0.0
    for b in range(B):
        z[b] += zf[b]


@nb.njit(cache=True, nogil=True, fastmath=True)
def tail_grad(ar, wr, c, ex_rows, bounds, lim, start, stop, grad_c, g):
    """The tail sum's gradient pieces for items start..stop, with e_bj = exp(ŝ_bj) (0 where excluded or
    clipped: the clamp's derivative):

        grad_c[j] = Σ_b e_bj w_b    (w = wr: the users' weights on the item side, d rows (B,))
        g[:, b]  += Σ_j e_bj c_j    (float64 (d, B) accumulator)

    Other arguments as in `tail_sum`. The d sums per item run two at a time: each pass over the row
    feeds two reductions and two accumulator rows.
    """
    D = len(ar)
    B = g.shape[1]
    row = np.empty(B, np.float32)
    bits = np.empty(B, np.int32)
    scale = bits.view(np.float32)
    gf = np.zeros((D, B), np.float32)
    for j in range(start, stop):
        cj = c[j]
        _exp_row(ar, cj, lim, False, ex_rows[bounds[j] : bounds[j + 1]], row, bits)
        for b in range(B):
            row[b] *= scale[b]
        for k in range(0, D - 1, 2):
            c0, c1, w0, w1, g0, g1 = cj[k], cj[k + 1], wr[k], wr[k + 1], gf[k], gf[k + 1]
            r0 = r1 = np.float32(0.0)
            for b in range(B):
                e = row[b]
                r0 += e * w0[b]
                r1 += e * w1[b]
                g0[b] += c0 * e
                g1[b] += c1 * e
            grad_c[j, k], grad_c[j, k + 1] = r0, r1
        if D % 2:
            ck, wk, gk = cj[D - 1], wr[D - 1], gf[D - 1]
            r = np.float32(0.0)
            for b in range(B):
                r += row[b] * wk[b]
                gk[b] += ck * row[b]
            grad_c[j, D - 1] = r
        if (j - start) & _FLUSH == _FLUSH:
            for k in range(D):
                for b in range(B):
                    g[k, b] += gf[k, b]
                    gf[k, b] = 0.0
    for k in range(D):
        for b in range(B):
            g[k, b] += gf[k, b]


@nb.njit(cache=True, nogil=True)
def _group_by_row(rows, cols, n_rows):
    """(offsets (n_rows + 1,), cols) of the pairs with col >= 0 grouped by row, in input order within a row:
    one counting sort over n_rows cursors."""
    start = np.zeros(n_rows + 1, np.int64)
    for p in range(cols.shape[0]):
        if cols[p] >= 0:
            start[rows[p] + 1] += 1
    for r in range(n_rows):
        start[r + 1] += start[r]
    cursor = start[:n_rows].copy()
    grouped = np.empty(start[n_rows], np.int64)
    for p in range(cols.shape[0]):
        if cols[p] >= 0:
            grouped[cursor[rows[p]]] = cols[p]
            cursor[rows[p]] += 1
    return start, grouped


@nb.njit(cache=True, nogil=True)
def _stable_by_col(rows, cols, n_cols):
    """(rows, cols) reordered by col, 0 <= col < n_cols, stably (rows keep their order within a col)."""
    first = np.zeros(n_cols + 1, np.int64)
    for q in range(cols.shape[0]):
        first[cols[q] + 1] += 1
    for j in range(n_cols):
        first[j + 1] += first[j]
    out_r, out_c = np.empty(cols.shape[0], np.int64), np.empty(cols.shape[0], np.int64)
    for q in range(cols.shape[0]):
        k = first[cols[q]]
        first[cols[q]] += 1
        out_r[k], out_c[k] = rows[q], cols[q]
    return out_r, out_c


@nb.njit(cache=True, nogil=True)
def sorted_pairs(rows, cols, n_rows, n_items):
    """The distinct (row, col) pairs with col >= 0, sorted by col then row, by two counting sorts:
    O(nnz + n_rows + n_items), where a comparison sort of the keys costs O(nnz log nnz).

    Args:
        rows, cols: (nnz,) int64, 0 <= rows < n_rows, cols < n_items (cols < 0: padding, dropped).

    Returns:
        (rows, cols), each (nnz',) int64.
    """
    start, grouped = _group_by_row(rows, cols, n_rows)
    by_row_r = np.empty(grouped.shape[0], np.int64)
    for r in range(n_rows):
        by_row_r[start[r] : start[r + 1]] = r
    out_r, out_c = _stable_by_col(by_row_r, grouped, n_items)
    n = 0
    for k in range(out_c.shape[0]):
        if n == 0 or out_r[k] != out_r[n - 1] or out_c[k] != out_c[n - 1]:
            out_r[n], out_c[n] = out_r[k], out_c[k]
            n += 1
    return out_r[:n], out_c[:n]


@nb.njit(cache=True, nogil=True)
def sampled_pairs(rows, cols, n_rows, where, m):
    """The exclusion pairs a sampled tail needs, without sorting them all by item.

    A sample S of m items takes (a) |X_b|, the distinct excluded items of each row over the whole catalogue,
    and (b) the distinct excluded pairs whose item is in S, at its position in S. Sorting every pair by item
    (`sorted_pairs`) scatters them over n_items cursors, which spills the caches once the catalogue grows
    (at 30k items it was the student step's largest cost); here the pairs are grouped by row (n_rows
    cursors), deduplicated row by row against a per-item stamp, and only those in S are sorted, over m
    positions: O(nnz + n_rows + n_items + m).

    Args:
        rows, cols: (nnz,) int64 pairs in any order, duplicates allowed; 0 <= rows < n_rows, cols < n_items
            (cols < 0: padding, dropped).
        where: (n_items,) int64 each item's position in S (0 <= position < m), or -1.
        m: |S|.

    Returns:
        (n_ex (n_rows,) int64 distinct excluded items per row, hit_rows, hit_pos): the distinct pairs in S,
        each (nnz',) int64, sorted by position in S then row -- as `sorted_pairs` sorts them.
    """
    start, by_row = _group_by_row(rows, cols, n_rows)
    stamp = np.full(where.shape[0], -1, np.int64)
    n_ex = np.zeros(n_rows, np.int64)
    hit_r, hit_p = np.empty(by_row.shape[0], np.int64), np.empty(by_row.shape[0], np.int64)
    n = 0
    for r in range(n_rows):
        for q in range(start[r], start[r + 1]):
            col = by_row[q]
            if stamp[col] != r:
                stamp[col] = r
                n_ex[r] += 1
                w = where[col]
                if w >= 0:
                    hit_r[n], hit_p[n] = r, w
                    n += 1
    out_r, out_p = _stable_by_col(hit_r[:n], hit_p[:n], m)
    return n_ex, out_r, out_p


_POOL: dict[int, ThreadPoolExecutor] = {}


def _ranges(n_items: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n_items // 1024 or 1))  # a part below ~1k items is not worth a thread
    return [(n_items * p // parts, n_items * (p + 1) // parts) for p in range(parts)]


def _run(fn, ranges: list[tuple[int, int]]) -> list:
    """fn(start, stop) over the item ranges: in this thread for one range, else on a pool (the kernels
    release the GIL)."""
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    pool = _POOL.get(len(ranges))
    if pool is None:
        pool = _POOL[len(ranges)] = ThreadPoolExecutor(len(ranges), thread_name_prefix="tail")
    return list(pool.map(lambda r: fn(*r), ranges))


def tail_forward(
    at: np.ndarray, c: np.ndarray, ex_rows: np.ndarray, bounds: np.ndarray, lim: float, threads: int = 1
) -> np.ndarray:
    """(B,) float64 Σ_{j ∉ X_b} 2^clamp(c_j . at[:, b], ±lim) (see `tail_sum`), over `threads` item ranges."""
    ar = tuple(at)
    lim32 = np.float32(lim)

    def part(s, e):
        z = np.zeros(at.shape[1], np.float64)
        tail_sum(ar, c, ex_rows, bounds, lim32, s, e, z)
        return z

    return sum(_run(part, _ranges(c.shape[0], threads)))


def tail_backward(
    at: np.ndarray,
    wt: np.ndarray,
    c: np.ndarray,
    ex_rows: np.ndarray,
    bounds: np.ndarray,
    lim: float,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(grad_c (N, d) float32, g (d, B) float64) of `tail_grad` over the whole catalogue."""
    ar, wr = tuple(at), tuple(wt)
    lim32 = np.float32(lim)
    grad_c = np.empty(c.shape, np.float32)

    def part(s, e):
        g = np.zeros(at.shape, np.float64)
        tail_grad(ar, wr, c, ex_rows, bounds, lim32, s, e, grad_c, g)
        return g

    return grad_c, sum(_run(part, _ranges(c.shape[0], threads)))
