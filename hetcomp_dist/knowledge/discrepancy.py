"""The discrepancy D@K between the student's ranking and teacher states (METHOD.md §3).

sigma = the student's top-K unobserved items (positions t = 0..K-1, -1 padded), pi = a teacher's list.

- code variant (default, the public code's semantics): gain g_t = 2^{exp(-t/lambda)} - 1 at the
  *student* position t, earned when sigma_t is in the teacher's top-K;
  NDCG = sum_t 1[sigma_t in top_K(pi)] g_t / log2(t+2)  /  sum_t g_t / log2(t+2).
- paper variant: relevance y = exp(-r/lambda) from the teacher's 0-based rank r of sigma_t (anywhere in
  pi, 0 when absent), gain 2^y - 1; the ideal DCG is the teacher's own order, i.e. the same
  denominator as the code variant.

D = 1 - NDCG. The denominator runs over all K positions in both variants, so a padded position (a
user with fewer than K unobserved items) counts as a miss -- as in the code, which always ranks K.

Vectorisation: for a block of users, a (rows, n_items) uint8/uint16 table holds each user's sigma
positions (t + 1, 0 = absent) -- a (batch of users x items) block, cleared after use. Every teacher
list then looks its items up in one gather, whatever the number of teachers. Weights are fixed-point
integers (2^-40 resolution), so a DCG is an exact, order-free sum: two lists with the same hits get
bit-identical D, and D = 0 exactly when every position hits.
"""

from __future__ import annotations

import numpy as np

PAD = -1
VARIANTS = ("code", "paper")
FIXED_BITS = 40
TABLE_CELLS = 1 << 22  # entries of the per-block position table (~4 MiB: cache-resident)
MIN_TABLE_ROWS = 16  # users per block even for huge catalogues (the Python loop's overhead)
_scratch: dict[str, np.ndarray] = {}  # the table, allocated once per process and kept all-zero


def _zeroed(size: int, dtype: type) -> np.ndarray:
    """A reusable all-zero buffer (a fresh 4 MiB calloc per batch costs more in page faults than the
    lookups themselves); callers reset every cell they set before returning."""
    key = np.dtype(dtype).str
    buf = _scratch.get(key)
    if buf is None or len(buf) < size:
        buf = _scratch[key] = np.zeros(size, dtype=dtype)
    return buf


def position_weights(d_k: int, lam: float = 10.0) -> np.ndarray:
    """(d_k,) float64: g_t / log2(t+2) with g_t = 2^{exp(-t/lam)} - 1 (the ideal DCG terms)."""
    t = np.arange(d_k, dtype=np.float64)
    return (2.0 ** np.exp(-t / lam) - 1.0) / np.log2(t + 2.0)


def _gain_table(d_k: int, L: int, variant: str, lam: float) -> tuple[np.ndarray, int]:
    """Fixed-point DCG term by (sigma position + 1, teacher rank): row 0 (absent) is 0; and the ideal.

    code: the term of position t whatever the rank (only the top-d_k ranks are looked up);
    paper: (2^{exp(-r/lam)} - 1) / log2(t+2).
    """
    scale = 2.0 ** FIXED_BITS
    t = np.arange(d_k, dtype=np.float64)
    ideal = int(np.round(position_weights(d_k, lam) * scale).astype(np.int64).sum())
    table = np.zeros((d_k + 1, L), dtype=np.int64)
    if variant == "code":
        table[1:, :] = np.round(position_weights(d_k, lam) * scale).astype(np.int64)[:, None]
        return table, ideal
    r = np.arange(L, dtype=np.float64)
    table[1:, :] = np.round((2.0 ** np.exp(-r / lam) - 1.0)[None, :] / np.log2(t + 2.0)[:, None] * scale)
    diag = np.round(position_weights(d_k, lam) * scale).astype(np.int64)  # the ideal: sigma = pi
    m = min(d_k, L)
    table[np.arange(1, m + 1), np.arange(m)] = diag[:m]
    return table, ideal


def discrepancies(sigma: np.ndarray, pis: np.ndarray, d_k: int = 50, variant: str = "code",
                  lam: float = 10.0) -> np.ndarray:
    """D@K of each user's student list against each of its teacher lists.

    Args:
        sigma: (B, >= d_k) student top items, best first, -1 padded (only the first d_k are used);
            each item at most once per row.
        pis: (B, M, L) teacher lists, best first, -1 padded; each item at most once per list.
        d_k: K of D@K.
        variant: "code" (membership in the teacher's top-d_k, gain of the student position) or
            "paper" (relevance exp(-r/lam) from the teacher's rank r).
        lam: lambda of exp(-t/lam) / exp(-r/lam).

    Returns:
        (B, M) float64 discrepancies in [0, 1].
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    sig = np.asarray(sigma)[:, :d_k]
    pis = np.asarray(pis)
    if variant == "code":
        pis = pis[:, :, :d_k]
    B, M, L = pis.shape
    if B == 0 or M == 0:
        return np.zeros((B, M), dtype=np.float64)
    if L == 0:
        return np.ones((B, M), dtype=np.float64)
    table, ideal = _gain_table(d_k, L, variant, lam)
    n_items = max(int(sig.max(initial=-1)), int(pis.max(initial=-1))) + 1
    width = n_items + 1  # the last column of each row is never written (read by PADs)
    rows = max(1, min(B, max(MIN_TABLE_ROWS, TABLE_CELLS // width)))
    pos = _zeroed(rows * width + 1, np.uint8 if d_k < 255 else np.uint16)  # + 1: cell -1 stays 0
    rank = np.arange(L, dtype=np.int64)
    dcg = np.empty((B, M), dtype=np.int64)
    for b0 in range(0, B, rows):
        b1 = min(b0 + rows, B)
        base = (np.arange(b1 - b0, dtype=np.int64) * width)[:, None]
        s = sig[b0:b1]
        cells = (base + s)[s >= 0]
        try:
            pos[cells] = (np.nonzero(s >= 0)[1] + 1).astype(pos.dtype)
            # (b, M, L): sigma position + 1, 0 = absent. A PAD (-1) lands on the previous row's PAD column,
            # or for row 0 on the buffer's last cell: both are never set, so read 0
            t1 = pos[base[:, :, None] + pis[b0:b1]]
        finally:
            pos[cells] = 0
        if variant == "code":  # the term depends on the position only
            dcg[b0:b1] = np.take(table[:, 0], t1).sum(axis=2)
        else:
            dcg[b0:b1] = np.take(table, t1.astype(np.int64) * L + rank).sum(axis=2)
    return np.maximum(ideal - dcg, 0) / float(ideal)


def discrepancy(sigma: np.ndarray, pi: np.ndarray, d_k: int = 50, variant: str = "code",
                lam: float = 10.0) -> np.ndarray:
    """D@K of one student list against one teacher list per row: (B, >= d_k), (B, L) -> (B,) float64."""
    return discrepancies(sigma, np.asarray(pi)[:, None, :], d_k, variant, lam)[:, 0]
