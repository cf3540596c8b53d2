"""Dynamic knowledge construction (DKC, METHOD.md §3): one step over a batch of users, all teachers.

State: v[b, x] in 0..S-1 = the trajectory state of teacher x chosen for user b (E1 = 0), d[b, x] = the
discrepancy D(sigma_b, pi^{x, min(v+1, S-1)}_b) recorded at the last call (NaN before the first).

- first call: d = D(sigma, pi^{min(v+1, S-1)}); nobody moves.
- later calls, teachers with v < S-1: d' = D(sigma, pi^{v+1}); rho = d / d' (d' = 0 -> rho = inf);
  code rule: move iff rho > alpha * decay^floor(e/p) or rho < 1; paper rule: move iff rho > alpha.
  A mover gets v <- v+1 and d <- D(sigma, pi^{min(v+1, S-1)}) at its new v; everyone else keeps d.
  Teachers already at the final state never move and keep d.
- targets T_u = g of the chosen states, recomputed only for users where some teacher moved.

Discrepancies are returned as float32 (the storage type of `d`), and d' is rounded the same way before
the ratio, so a round computed in memory and one re-read from storage take identical decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetcomp_dist.knowledge.discrepancy import discrepancies
from hetcomp_dist.knowledge.ensemble import ensemble_topk

MOVE_RULES = ("code", "paper")


@dataclass(frozen=True)
class DKCParams:
    """The knobs of one DKC step (a subset of `KnowledgeConfig`)."""

    d_k: int = 50
    d_variant: str = "code"
    d_lambda: float = 10.0
    move_rule: str = "code"
    alpha: float = 1.05
    decay: float = 0.995
    period: int = 10

    @classmethod
    def from_config(cls, kcfg) -> "DKCParams":
        return cls(kcfg.d_k, kcfg.d_variant, kcfg.d_lambda, kcfg.move_rule, kcfg.alpha, kcfg.decay, kcfg.period)


def threshold(epoch: int, params: DKCParams) -> float:
    """th = alpha * decay^floor(epoch / p) (code rule) or alpha (paper rule)."""
    if params.move_rule == "paper":
        return float(params.alpha)
    return float(params.alpha * params.decay ** (epoch // params.period))


def _disc(lists: np.ndarray, sigma: np.ndarray, rows: np.ndarray, state: np.ndarray, params: DKCParams) -> np.ndarray:
    """float32 (len(rows), M): D(sigma[b], lists[b, x, state[b, x]]) for every teacher of the given users."""
    if len(rows) == 0:
        return np.zeros((0, lists.shape[1]), dtype=np.float32)
    width = params.d_k if params.d_variant == "code" else lists.shape[3]  # code: only the top-d_k matter
    pis = lists[rows[:, None], np.arange(lists.shape[1])[None, :], state[rows], :width]  # (rows, M, width)
    return discrepancies(sigma[rows], pis, params.d_k, params.d_variant, params.d_lambda).astype(np.float32)


def dkc_step(lists: np.ndarray, v: np.ndarray, d: np.ndarray, sigma: np.ndarray, epoch: int, first: bool,
             params: DKCParams = DKCParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One DKC call for a batch of users and all teachers.

    Args:
        lists: (B, M, S, K) int item ids, teacher x's top-K at state s, best first, -1 padded.
        v: (B, M) int current state indices (0..S-1).
        d: (B, M) float last discrepancies (NaN before the first call; ignored by the first call).
        sigma: (B, >= d_k) int the student's top unobserved items, best first, -1 padded.
        epoch: the student epoch e of this call (sets the decayed threshold).
        first: whether this is the first DKC call (compute d, nobody moves).
        params: `DKCParams`.

    Returns:
        (v_new (B, M) int8, d_new (B, M) float32, moved (B, M) bool).
    """
    if params.move_rule not in MOVE_RULES:
        raise ValueError(f"move_rule must be one of {MOVE_RULES}, got {params.move_rule!r}")
    B, M, S, _ = lists.shape
    last = S - 1
    v = np.asarray(v).astype(np.int64)
    if v.shape != (B, M) or (v.size and (v.min() < 0 or v.max() > last)):
        raise ValueError(f"v must be (B, M) = {(B, M)} in 0..{last}")
    d_new = np.asarray(d, dtype=np.float32).copy()
    moved = np.zeros((B, M), dtype=bool)
    nxt = np.minimum(v + 1, last)
    if first:
        d_new[:] = _disc(lists, sigma, np.arange(B), nxt, params)
        return v.astype(np.int8), d_new, moved

    active = v < last
    rows = np.nonzero(active.any(axis=1))[0]  # users with a teacher that can still move
    d_next = _disc(lists, sigma, rows, nxt, params).astype(np.float64)
    d_old = d_new[rows].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(d_next == 0, np.inf, d_old / np.where(d_next == 0, 1.0, d_next))
    th = threshold(epoch, params)
    go = (rho > th) | (rho < 1) if params.move_rule == "code" else rho > th
    moved[rows] = go & active[rows]
    v_new = v + moved
    rows = np.nonzero(moved.any(axis=1))[0]
    d_moved = _disc(lists, sigma, rows, np.minimum(v_new + 1, last), params)
    d_new[rows] = np.where(moved[rows], d_moved, d_new[rows])
    return v_new.astype(np.int8), d_new, moved


def rebuild_targets(lists: np.ndarray, v: np.ndarray, changed: np.ndarray, prev: np.ndarray, k: int,
                    temperature: float = 10.0, weights: np.ndarray | None = None) -> np.ndarray:
    """T_u = g of the chosen states for users whose selection changed; the previous targets otherwise.

    Args:
        lists: (B, M, S, K) trajectories; v: (B, M) chosen states; changed: (B,) bool;
        prev: (B, k) previous targets (-1 padded).

    Returns:
        (B, k) int32 targets.
    """
    out = np.array(prev, dtype=np.int32, copy=True)
    rows = np.nonzero(changed)[0]
    if len(rows):
        chosen = lists[rows[:, None], np.arange(lists.shape[1])[None, :], np.asarray(v)[rows]]  # (rows, M, K)
        out[rows] = ensemble_topk(chosen, k, temperature, weights)
    return out


def state_means(v_sum: np.ndarray, n_users: int) -> np.ndarray:
    """(M,) mean state index per teacher from per-teacher sums over users."""
    return np.asarray(v_sum, dtype=np.float64) / max(int(n_users), 1)


def switch_fired(means: np.ndarray, final_state: int) -> bool:
    """The switch: every teacher's mean state, rounded to 2 decimals, equals the final state."""
    return bool(np.all(np.round(np.asarray(means, dtype=np.float64), 2) == final_state))
