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
import torch

PAD = -1
VARIANTS = ("code", "paper")


def rank_in(sigma: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """0-based rank of every sigma[b, t] in pi[b], or -1 when absent (or sigma[b, t] is PAD).

    Args:
        sigma: (B, S) item ids, -1 padded.
        pi: (B, L) item ids, -1 padded, at most one occurrence of an item per row.

    Returns:
        (B, S) int64 ranks.
    """
    sigma_t = torch.from_numpy(np.ascontiguousarray(sigma, dtype=np.int64))
    B, S = sigma_t.shape
    if pi.shape[1] == 0 or B == 0:
        return np.full((B, S), -1, dtype=np.int64)
    sorted_pi, perm = torch.sort(torch.from_numpy(np.ascontiguousarray(pi, dtype=np.int64)), dim=1)
    pos = torch.searchsorted(sorted_pi, sigma_t).clamp_(max=pi.shape[1] - 1)
    found = (torch.gather(sorted_pi, 1, pos) == sigma_t) & (sigma_t >= 0)
    return torch.where(found, torch.gather(perm, 1, pos), torch.full_like(pos, -1)).numpy()


def position_weights(d_k: int, lam: float = 10.0) -> np.ndarray:
    """(d_k,) float64: g_t / log2(t+2) with g_t = 2^{exp(-t/lam)} - 1 (the ideal DCG terms)."""
    t = np.arange(d_k, dtype=np.float64)
    return (2.0 ** np.exp(-t / lam) - 1.0) / np.log2(t + 2.0)


def discrepancy(sigma: np.ndarray, pi: np.ndarray, d_k: int = 50, variant: str = "code",
                lam: float = 10.0) -> np.ndarray:
    """D@K = 1 - NDCG@K of the student's list against one teacher list, per row.

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
    wpos = position_weights(d_k, lam)[None, :]  # (1, d_k)
    ideal = wpos.sum(axis=1)  # reduced exactly like the per-row sums below
    if variant == "code":
        # the missed weight over the ideal: exactly 0 when every sigma_t is in the teacher's top-d_k
        r = rank_in(sig, np.asarray(pi)[:, :d_k])
        return np.where(r < 0, wpos, 0.0).sum(axis=1) / ideal
    r = rank_in(sig, np.asarray(pi))
    rel = (2.0 ** np.exp(-np.maximum(r, 0) / lam) - 1.0) / np.log2(np.arange(d_k, dtype=np.float64) + 2.0)[None, :]
    return 1.0 - np.where(r >= 0, rel, 0.0).sum(axis=1) / ideal
