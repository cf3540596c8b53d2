"""The discrepancy D@K between the student's ranking and one teacher state (METHOD.md §3).

sigma = the student's top-K unobserved items (positions t = 0..K-1, -1 padded), pi = a teacher's list.

- code variant (default, the public code's semantics): gain g_t = 2^{exp(-t/lambda)} - 1 at the
  *student* position t, earned when sigma_t is in the teacher's top-K;
  NDCG = sum_t 1[sigma_t in top_K(pi)] g_t / log2(t+2)  /  sum_t g_t / log2(t+2).
- paper variant: relevance y = exp(-r/lambda) from the teacher's 0-based rank r of sigma_t (anywhere in
  pi, 0 when absent), gain 2^y - 1; the ideal DCG is the teacher's own order, i.e. the same
  denominator as the code variant.

D = 1 - NDCG. The denominator runs over all K positions in both variants, so a padded position (a
user with fewer than K unobserved items) counts as a miss -- as in the code, which always ranks K.
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist.knowledge.ensemble import key_dtype

PAD = -1
VARIANTS = ("code", "paper")


FIXED_BITS = 40  # fixed-point weights: sums are exact integers, so equal hit sets give equal D


def _merged_sort(sigma: np.ndarray, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sorts each row's merged keys ``item << b | tag`` (tag t < P for sigma, P + r for pi), pads last.

    Returns (item, tag, hit, P): (B, S+L) arrays in key order, with hit[b, j] true when entry j is a
    sigma item whose next entry is the same item in pi (then its rank is tag[b, j+1] - P).
    """
    B, S = sigma.shape
    L = pi.shape[1]
    pbits = max(S, L, 1).bit_length()  # P = 2^pbits > max(S, L) - 1
    P = 1 << pbits
    tbits = pbits + 1
    big = max(int(sigma.max(initial=0)), int(pi.max(initial=0)), 0) + 1
    dt, udt = (np.int32, np.uint32) if key_dtype(big << tbits) is np.int32 else (np.int64, np.uint64)
    tag = np.concatenate([np.arange(S), P + np.arange(L)]).astype(dt)
    merged = np.concatenate([sigma.astype(dt, copy=False), pi.astype(dt, copy=False)], axis=1)
    keys = np.sort(((merged << dt(tbits)) | tag[None, :]).view(udt), axis=1).view(dt)
    item = keys >> dt(tbits)
    tg = keys & dt((1 << tbits) - 1)
    hit = np.zeros(keys.shape, dtype=bool)
    hit[:, :-1] = (item[:, :-1] >= 0) & (item[:, :-1] == item[:, 1:]) & (tg[:, 1:] >= P)
    return item, tg, hit, P


def rank_in(sigma: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """0-based rank of every sigma[b, t] in pi[b], or -1 when absent (or sigma[b, t] is PAD).

    Args:
        sigma: (B, S) item ids, -1 padded, each item at most once per row.
        pi: (B, L) item ids, -1 padded, each item at most once per row.

    Returns:
        (B, S) int64 ranks.
    """
    sigma, pi = np.asarray(sigma), np.asarray(pi)
    B, S = sigma.shape
    if B == 0 or S == 0 or pi.shape[1] == 0:
        return np.full((B, S), -1, dtype=np.int64)
    item, tg, hit, P = _merged_sort(sigma, pi)
    r_next = np.full(tg.shape, -1, dtype=np.int64)
    r_next[:, :-1] = np.where(hit[:, :-1], tg[:, 1:] - P, -1)
    out = np.full((B, S + 1), -1, dtype=np.int64)  # column S collects the pi entries
    np.put_along_axis(out, np.where(tg < P, tg, S).astype(np.int64), r_next, axis=1)
    return out[:, :S]


def position_weights(d_k: int, lam: float = 10.0) -> np.ndarray:
    """(d_k,) float64: g_t / log2(t+2) with g_t = 2^{exp(-t/lam)} - 1 (the ideal DCG terms)."""
    t = np.arange(d_k, dtype=np.float64)
    return (2.0 ** np.exp(-t / lam) - 1.0) / np.log2(t + 2.0)


def _paper_table(d_k: int, L: int, lam: float) -> np.ndarray:
    """(d_k, max(L, d_k)) fixed-point (2^{exp(-r/lam)} - 1) / log2(t+2) for position t, teacher rank r."""
    r = np.arange(max(L, d_k), dtype=np.float64)
    gain = 2.0 ** np.exp(-r / lam) - 1.0
    disc = np.log2(np.arange(d_k, dtype=np.float64) + 2.0)
    return np.round(gain[None, :] / disc[:, None] * 2.0 ** FIXED_BITS).astype(np.int64)


def discrepancy(sigma: np.ndarray, pi: np.ndarray, d_k: int = 50, variant: str = "code",
                lam: float = 10.0) -> np.ndarray:
    """D@K = 1 - NDCG@K of the student's list against one teacher list, per row.

    Weights are fixed-point integers (2^-40 resolution), so a DCG is an exact, order-free sum: two
    rows with the same hits get bit-identical D, and D = 0 exactly when every position hits.

    Args:
        sigma: (B, >= d_k) student top items, best first, -1 padded (only the first d_k are used).
        pi: (B, L) teacher items, best first, -1 padded.
        d_k: K of D@K.
        variant: "code" (membership in the teacher's top-d_k, gain of the student position) or
            "paper" (relevance exp(-r/lam) from the teacher's rank r).
        lam: lambda of exp(-t/lam) / exp(-r/lam).

    Returns:
        (B,) float64 discrepancies in [0, 1].
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    sig = np.asarray(sigma)[:, :d_k]
    if sig.shape[1] < d_k:  # fewer columns than d_k: the missing positions are misses
        sig = np.concatenate([sig, np.full((len(sig), d_k - sig.shape[1]), PAD, sig.dtype)], axis=1)
    pi = np.asarray(pi)[:, :d_k] if variant == "code" else np.asarray(pi)
    B, L = len(sig), pi.shape[1]
    if B == 0:
        return np.zeros(0, dtype=np.float64)
    if L == 0:
        return np.ones(B, dtype=np.float64)
    item, tg, hit, P = _merged_sort(sig, pi)
    if variant == "code":
        w = np.zeros(2 * P, dtype=np.int64)  # by tag: sigma positions t < d_k; pi tags weigh 0
        w[:d_k] = np.round(position_weights(d_k, lam) * 2.0 ** FIXED_BITS).astype(np.int64)
        missed = np.where(hit, 0, np.take(w, tg)).sum(axis=1)  # sigma pads are misses too
        return missed / float(w.sum())
    table = _paper_table(d_k, L, lam)
    ideal = int(np.trace(table[:, :d_k]))
    width = table.shape[1]
    r_next = np.zeros(tg.shape, dtype=np.int64)
    r_next[:, :-1] = tg[:, 1:] - P
    idx = np.where(hit, tg.astype(np.int64) * width + r_next, 0)
    dcg = np.where(hit, np.take(table.ravel(), idx), 0).sum(axis=1)
    return np.maximum(ideal - dcg, 0) / float(ideal)
