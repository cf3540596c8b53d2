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

Compiled per-user kernels (numba): a user's sigma goes into a position map over item ids (uint16,
one per thread, max item + 3 entries: 50 KB for 25k items, 2 MB for a million), and each teacher
item reads its DCG term through it without a branch -- one direct load per item, cheaper than a
hash table lookup and its probing. DCG terms are fixed-point integers (2^-40 resolution), so a DCG
is an exact, order-free sum: two lists with the same hits get bit-identical D, and D = 0 exactly when
every position hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

PAD = -1
VARIANTS = ("code", "paper")
FIXED_BITS = 40
MAX_D_K = 65535  # positions + 1 fit the uint16 map


def position_weights(d_k: int, lam: float = 10.0) -> np.ndarray:
    """(d_k,) float64: g_t / log2(t+2) with g_t = 2^{exp(-t/lam)} - 1 (the ideal DCG terms)."""
    t = np.arange(d_k, dtype=np.float64)
    return (2.0 ** np.exp(-t / lam) - 1.0) / np.log2(t + 2.0)


@dataclass(frozen=True)
class Gains:
    """The fixed-point DCG terms of one (d_k, variant, lambda) and how far a teacher list is read.

    table: (d_k + 1, 1) (code: row t + 1 = the term of position t, whatever the rank) or (d_k + 1, L)
    (paper: the term of position t for teacher rank r); row 0 (not in sigma) is 0. ideal: the ideal
    DCG; width: teacher ranks looked up (code: the top-d_k only; paper: the whole list); paper:
    whether the table is indexed by rank.
    """

    table: np.ndarray
    ideal: int
    width: int
    paper: bool

    def astuple(self) -> tuple:
        """(flat table, row stride, ideal, width, paper): the form the kernels take (`user_d`)."""
        return (
            np.ascontiguousarray(self.table).ravel(),
            np.uintp(self.table.shape[1]),
            self.ideal,
            self.width,
            self.paper,
        )


def gains(d_k: int, L: int, variant: str = "code", lam: float = 10.0) -> Gains:
    """The `Gains` for teacher lists of length L."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not 0 < d_k < MAX_D_K:
        raise ValueError(f"d_k must be in 1..{MAX_D_K - 1}, got {d_k}")
    scale = 2.0**FIXED_BITS
    diag = np.round(position_weights(d_k, lam) * scale).astype(np.int64)
    ideal = int(diag.sum())
    if variant == "code":
        return Gains(np.concatenate([[0], diag])[:, None], ideal, min(d_k, L), False)
    t = np.arange(d_k, dtype=np.float64)
    r = np.arange(L, dtype=np.float64)
    table = np.zeros((d_k + 1, L), dtype=np.int64)
    table[1:] = np.round((2.0 ** np.exp(-r / lam) - 1.0)[None, :] / np.log2(t + 2.0)[:, None] * scale)
    m = min(d_k, L)
    table[np.arange(1, m + 1), np.arange(m)] = diag[:m]  # the ideal exactly: sigma = pi gives D = 0
    return Gains(table, ideal, L, True)


# ---------------------------------------------------------------------------------- the kernels
def map_size(sigma: np.ndarray) -> int:
    """Length of the position map of `load_sigma` for these student lists: max item + 3 (PAD slot,
    items, and a last slot that stays 0 for any larger teacher item)."""
    return int(np.asarray(sigma).max(initial=-1)) + 3


@numba.njit(cache=True, inline="always")
def load_sigma(pmap, sigma, b, d_k):
    """pmap[item + 1] = t + 1 for user b's sigma[b, :d_k]; slot 0 (PAD) stays 0."""
    for t in range(min(d_k, sigma.shape[1])):
        pmap[sigma[b, t] + 1] = t + 1
    pmap[0] = 0


@numba.njit(cache=True, inline="always")
def unload_sigma(pmap, sigma, b, d_k):
    """Resets the slots `load_sigma` set: the map is all-zero again for the next user."""
    for t in range(min(d_k, sigma.shape[1])):
        pmap[sigma[b, t] + 1] = 0


@numba.njit(cache=True, inline="always")
def user_d(pmap, lists, b, x, s, table, stride, ideal, width, paper):
    """float64 D of user b's sigma (in `pmap`) against lists[b, x, s]; (table, stride, ...) as
    `Gains.astuple`.

    Each teacher item reads its sigma position + 1 (0 when absent, PADs and items beyond the map
    included) and adds that row of the table, whose row 0 is 0: no branch on hit or miss. The indices
    are unsigned (a PAD's item + 1 = 0; larger items clamp to the map's last slot), so numba emits no
    negative-index fix-up per lookup.
    """
    top = np.uint32(len(pmap) - 1)
    row = lists[b, x, s]
    dcg = 0
    for r in range(width):
        pos = np.uintp(pmap[min(np.uint32(row[r] + 1), top)])
        dcg += table[pos * stride + (np.uintp(r) if paper else np.uintp(0))]
    return max(ideal - dcg, 0) / ideal


@numba.njit(cache=True, error_model="numpy")
def _d_rows(sigma, lists, d_k, g, n_map, out, lo, hi):
    """out[b, x] = D(sigma[b], lists[b, x, 0]) for users lo..hi-1 (lists (B, M, 1, L), any strides)."""
    table, stride, ideal, width, paper = g
    pmap = np.zeros(n_map, dtype=np.uint16)
    for b in range(lo, hi):
        load_sigma(pmap, sigma, b, d_k)
        for x in range(out.shape[1]):
            out[b, x] = user_d(pmap, lists, b, x, 0, table, stride, ideal, width, paper)
        unload_sigma(pmap, sigma, b, d_k)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _d_kernel(sigma, lists, d_k, g, n_map, out, threads):
    """`_d_rows` over all users, one contiguous chunk per thread."""
    B = out.shape[0]
    n_chunks = max(1, min(threads, B))
    for c in numba.prange(n_chunks):
        _d_rows(sigma, lists, d_k, g, n_map, out, c * B // n_chunks, (c + 1) * B // n_chunks)


# ------------------------------------------------------------------------------------ the API
def discrepancies(
    sigma: np.ndarray, pis: np.ndarray, d_k: int = 50, variant: str = "code", lam: float = 10.0
) -> np.ndarray:
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
    pis = np.asarray(pis)
    B, M, L = pis.shape
    g = gains(d_k, L, variant, lam)
    out = np.ones((B, M), dtype=np.float64)
    if B == 0 or M == 0 or L == 0:
        return out
    sigma = np.asarray(sigma).astype(np.int32, copy=False)
    _d_kernel(
        sigma,
        pis.astype(np.int32, copy=False)[:, :, None, :],
        d_k,
        g.astuple(),
        map_size(sigma),
        out,
        numba.get_num_threads(),
    )
    return out


def discrepancy(
    sigma: np.ndarray, pi: np.ndarray, d_k: int = 50, variant: str = "code", lam: float = 10.0
) -> np.ndarray:
    """D@K of one student list against one teacher list per row: (B, >= d_k), (B, L) -> (B,) float64."""
    return discrepancies(sigma, np.asarray(pi)[:, None, :], d_k, variant, lam)[:, 0]
