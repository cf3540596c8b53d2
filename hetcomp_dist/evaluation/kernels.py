"""Compiled per-row kernels of the evaluation: exact FAISS retrieval (`faiss_exact.py`), protocol lists
and metric hits (`evaluate.py`, `metrics.py`), one user row at a time.

Per-row work over candidate lists and exclusion sets is O(candidates + excluded) with a scratch
``mark`` array over the items (zero on entry, zero again on return), instead of sorting encoded
(row, item) keys for the whole batch. Exclusion sets come as one CSR over the rows with a bit code per
entry (e.g. train 1, valid 2, test 4); a protocol drops a candidate when its code shares a bit with the
protocol's mask. Candidate lists are ``(A, M)`` float32 FAISS scores (higher = better) and int64 item
ids, best first, padded with id -1.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, inline="always")
def _score(q: np.ndarray, v: np.ndarray, l2: bool) -> float:
    """Float64 ranking score: u.v (ip) or -|u - v|^2 (l2)."""
    s = 0.0
    if l2:
        for j in range(q.shape[0]):
            t = q[j] - v[j]
            s -= t * t
    else:
        for j in range(q.shape[0]):
            s += q[j] * v[j]
    return s


@nb.njit(cache=True, nogil=True)
def merge_into(
    run_s: np.ndarray, run_i: np.ndarray, rows: np.ndarray, new_s: np.ndarray, new_i: np.ndarray
) -> None:
    """In place: run[rows[j]] <- the best M of run[rows[j]] and new[j] (both best first, id -1 = none).

    Args:
        run_s, run_i: (A, M) running lists.
        rows: (R,) rows of run to update.
        new_s, new_i: (R, m) lists of one more scanned block.
    """
    M, m = run_s.shape[1], new_s.shape[1]
    buf_s = np.empty(M, run_s.dtype)
    buf_i = np.empty(M, run_i.dtype)
    for j in range(rows.shape[0]):
        r = rows[j]
        a = 0
        b = 0
        for c in range(M):
            has_a = a < M and run_i[r, a] >= 0
            has_b = b < m and new_i[j, b] >= 0
            if has_a and (not has_b or run_s[r, a] >= new_s[j, b]):
                buf_s[c], buf_i[c] = run_s[r, a], run_i[r, a]
                a += 1
            elif has_b:
                buf_s[c], buf_i[c] = new_s[j, b], new_i[j, b]
                b += 1
            else:
                buf_s[c], buf_i[c] = -np.inf, -1
        run_s[r], run_i[r] = buf_s, buf_i


@nb.njit(cache=True, nogil=True)
def insert_hits(
    run_s: np.ndarray,
    run_i: np.ndarray,
    rows: np.ndarray,
    lims: np.ndarray,
    hit_s: np.ndarray,
    hit_i: np.ndarray,
) -> None:
    """In place: insert row j's hits ``hit_*[lims[j]:lims[j+1]]`` (any order; a FAISS range search's
    output) into the best-first list run[rows[j]], keeping its best M."""
    M = run_s.shape[1]
    for j in range(rows.shape[0]):
        r = rows[j]
        for h in range(lims[j], lims[j + 1]):
            s = hit_s[h]
            if run_i[r, M - 1] >= 0 and s <= run_s[r, M - 1]:
                continue
            c = M - 1
            while c > 0 and (run_i[r, c - 1] < 0 or run_s[r, c - 1] < s):
                run_s[r, c], run_i[r, c] = run_s[r, c - 1], run_i[r, c - 1]
                c -= 1
            run_s[r, c], run_i[r, c] = s, hit_i[h]


@nb.njit(cache=True, nogil=True)
def kth_kept(
    run_s: np.ndarray,
    run_i: np.ndarray,
    rows: np.ndarray,
    ex_off: np.ndarray,
    ex_item: np.ndarray,
    k: int,
    mark: np.ndarray,
) -> np.ndarray:
    """(R,) float32 score of the k-th candidate of run[rows[j]] in none of the row's exclusion sets;
    -inf when fewer than k are."""
    out = np.full(rows.shape[0], -np.inf, np.float32)
    for j in range(rows.shape[0]):
        r = rows[j]
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] = 1
        cnt = 0
        for c in range(run_i.shape[1]):
            it = run_i[r, c]
            if it < 0:
                break
            if mark[it] == 0:
                cnt += 1
                if cnt == k:
                    out[j] = run_s[r, c]
                    break
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] = 0
    return out


@nb.njit(cache=True, nogil=True)
def first_k_kept_sets(
    cand: np.ndarray,
    ex_off: np.ndarray,
    ex_item: np.ndarray,
    ex_bits: np.ndarray,
    masks: np.ndarray,
    k: int,
    out: np.ndarray,
    mark: np.ndarray,
) -> None:
    """out[p, r] = the first k candidates of row r whose code & masks[p] == 0, in order, -1-padded.

    Args:
        cand: (B, C) item ids best first (-1 = none).
        ex_off, ex_item, ex_bits: CSR exclusion sets over the B rows with their bit codes.
        masks: (P,) uint8 protocol masks.
        out: (P, B, k) int32, filled here.
        mark: (n_items,) uint8 scratch, zero.
    """
    for r in range(cand.shape[0]):
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] |= ex_bits[e]
        for p in range(masks.shape[0]):
            cnt = 0
            for c in range(cand.shape[1]):
                if cnt == k:
                    break
                it = cand[r, c]
                if it >= 0 and mark[it] & masks[p] == 0:
                    out[p, r, cnt] = it
                    cnt += 1
            for c in range(cnt, k):
                out[p, r, c] = -1
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] = 0


@nb.njit(cache=True, nogil=True)
def hit_matrix(topk: np.ndarray, gt_off: np.ndarray, gt_item: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """(B, K) bool: topk[b, j] is in row b's ground-truth set (-1 never is); `mark` as above."""
    B, K = topk.shape
    hit = np.zeros((B, K), np.bool_)
    for r in range(B):
        for e in range(gt_off[r], gt_off[r + 1]):
            mark[gt_item[e]] = 1
        for j in range(K):
            it = topk[r, j]
            hit[r, j] = it >= 0 and mark[it] != 0
        for e in range(gt_off[r], gt_off[r + 1]):
            mark[gt_item[e]] = 0
    return hit


@nb.njit(cache=True, nogil=True)
def finish(
    q64: np.ndarray,
    v64: np.ndarray,
    l2: bool,
    run_s: np.ndarray,
    run_i: np.ndarray,
    g: np.ndarray,
    ub: np.ndarray,
    ex_off: np.ndarray,
    ex_item: np.ndarray,
    ex_bits: np.ndarray,
    masks: np.ndarray,
    k: int,
    out: np.ndarray,
    mark: np.ndarray,
) -> np.ndarray:
    """Per-protocol top-k lists of candidate rows, ordered exactly; flags rows that need a full rescan.

    Candidates are rescored in float64 and ordered by (score desc, id asc) -- a stable argsort of
    float64 brute-force scores. The float32 list holds the exact answer when every item outside it
    scores below each protocol's k-th kept item: outside items are either bounded by ``ub`` (not
    scanned, or left out by a range search) or ranked below the list's M-th float32 score (so exact
    score <= that + ``g``, the row's float32 error bound). A row where that is not certain is flagged.

    Args:
        q64: (A, d) float64 queries; v64: (n, d) float64 items by id.
        l2: score -|u - v|^2 instead of u.v.
        run_s, run_i: (A, M) float32 candidates, best first (id -1 = none). A row holding fewer than M
            candidates left no item out for its rank.
        g: (A,) bound on |float32 score - exact score| of any item.
        ub: (A,) bound on the exact score of any item neither in the list nor below its M-th float32
            score (unscanned, or skipped by a range search; -inf: none).
        ex_off, ex_item, ex_bits: CSR exclusion sets over the A rows with their bit codes.
        masks: (P,) uint8 per protocol: drop a candidate whose code & mask != 0.
        k: list length.
        out: (P, A, k) int32, filled here (-1 padding).
        mark: (n,) uint8 scratch, zero.

    Returns:
        (A,) bool: rows whose lists are not certain (near-ties at the boundary); to be redone exactly.
    """
    A, M = run_i.shape
    P = masks.shape[0]
    redo = np.zeros(A, np.bool_)
    s64 = np.empty(M)
    ids = np.empty(M, np.int64)
    for r in range(A):
        n_c = 0
        while n_c < M and run_i[r, n_c] >= 0:
            it = run_i[r, n_c]
            s, i = _score(q64[r], v64[it], l2), it
            c = n_c  # insertion sort: the float32 order is nearly the exact one
            while c > 0 and (s64[c - 1] < s or (s64[c - 1] == s and ids[c - 1] > i)):
                s64[c], ids[c] = s64[c - 1], ids[c - 1]
                c -= 1
            s64[c], ids[c] = s, i
            n_c += 1
        outside = ub[r]
        if n_c == M:
            outside = max(outside, np.float64(run_s[r, M - 1]) + g[r])
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] |= ex_bits[e]
        for p in range(P):
            cnt = 0
            for c in range(n_c):
                if mark[ids[c]] & masks[p] == 0:
                    out[p, r, cnt] = ids[c]
                    cnt += 1
                    if cnt == k:
                        if not outside < s64[c]:
                            redo[r] = True
                        break
            if cnt < k and outside > -np.inf:
                redo[r] = True
            for c in range(cnt, k):
                out[p, r, c] = -1
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] = 0
    return redo


@nb.njit(cache=True, nogil=True)
def exact_rows(
    q64: np.ndarray,
    v64: np.ndarray,
    l2: bool,
    rows: np.ndarray,
    ex_off: np.ndarray,
    ex_item: np.ndarray,
    ex_bits: np.ndarray,
    masks: np.ndarray,
    k: int,
    out: np.ndarray,
    mark: np.ndarray,
) -> None:
    """out[:, r] for r in rows by a float64 scan of every item: per protocol the top k kept items by
    (score desc, id asc). Arguments as in `finish`."""
    n = v64.shape[0]
    s = np.empty(n)
    for r in rows:
        for i in range(n):
            s[i] = _score(q64[r], v64[i], l2)
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] |= ex_bits[e]
        for p in range(masks.shape[0]):
            kept = np.empty(n, np.int64)
            n_kept = 0
            for i in range(n):
                if mark[i] & masks[p] == 0:
                    kept[n_kept] = i
                    n_kept += 1
            kept = kept[:n_kept]
            neg = -s[kept]
            if n_kept > k:  # only the items scoring at least the k-th can make the list
                kth = np.partition(neg, k - 1)[k - 1]
                kept = kept[neg <= kth]
                neg = neg[neg <= kth]
            top = kept[np.argsort(neg, kind="mergesort")[:k]]  # stable: equal scores by id, as kept is
            out[p, r, : top.shape[0]] = top
            out[p, r, top.shape[0] :] = -1
        for e in range(ex_off[r], ex_off[r + 1]):
            mark[ex_item[e]] = 0
