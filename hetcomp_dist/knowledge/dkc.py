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

A compiled per-user kernel (numba, users in parallel) runs the rule with the D@K helpers of
`discrepancy` on the lists in place: no (users, M, width) block of the chosen states is gathered.
`dkc_step_targets` (what a round calls) builds a changed user's targets in the same pass, right
after its step, with the ensemble's kernels: the lists are read from memory once per round, not once
for the step and again for `rebuild_targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from hetcomp_dist.knowledge import hashtable as ht
from hetcomp_dist.knowledge.discrepancy import gains, load_sigma, map_size, unload_sigma, user_d
from hetcomp_dist.knowledge.ensemble import (
    as_weights,
    check_items,
    dense_size,
    g_states_kernel,
    score_table,
    select_top,
    workspace,
)
from hetcomp_dist.knowledge.prefetch import prefetch_row

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
    def from_config(cls, kcfg) -> DKCParams:
        return cls(
            kcfg.d_k, kcfg.d_variant, kcfg.d_lambda, kcfg.move_rule, kcfg.alpha, kcfg.decay, kcfg.period
        )


def threshold(epoch: int, params: DKCParams) -> float:
    """th = alpha * decay^floor(epoch / p) (code rule) or alpha (paper rule)."""
    if params.move_rule == "paper":
        return float(params.alpha)
    return float(params.alpha * params.decay ** (epoch // params.period))


@numba.njit(cache=True, error_model="numpy")
def _dkc_rows(
    lists, v, d, sigma, first, th, code_rule, d_k, g, n_map, v_out, d_out, moved, score, out, n_dense, lo, hi
):
    """The rule of the module docstring for users lo..hi-1; v_out / d_out start as copies of v / d.

    With out of k > 0 columns (a copy of the previous targets), a user with a mover also gets
    out[b] = g of its new states, straight after its step: the mover's rows, just read for d', are
    still in L1, and the lists are streamed once per round instead of twice. Returns the largest item
    id >= n_dense the targets met (dense score table, `check_items`), else -1.
    """
    table, stride, ideal, width, paper = g
    M, last, L = lists.shape[1], lists.shape[2] - 1, lists.shape[3]
    targets = out.shape[1] > 0
    ws = workspace(M * L if targets else 1, n_dense if targets else 0)
    keys, vals, used = ws[0], ws[1], ws[2]
    nd = np.uint32(n_dense if targets else 0)
    bits = ht.table_bits(M * L, 2)
    bad = -1
    pmap = np.zeros(n_map, dtype=np.uint16)
    ahead = L if targets else width  # v+1 is a mover's new state: its targets read the whole row
    for b in range(lo, hi):
        if b + 1 < hi:  # the next user's rows this rule reads (v+1, v+2), loading while b computes
            for x in range(M):
                nx = v[b + 1, x]
                prefetch_row(lists, b + 1, x, min(nx + 1, last), ahead)
                if not first:
                    prefetch_row(lists, b + 1, x, min(nx + 2, last), width)
        load_sigma(pmap, sigma, b, d_k)
        any_moved = False
        for x in range(M):
            vx = v[b, x]
            if first:
                d_out[b, x] = np.float32(
                    user_d(pmap, lists, b, x, min(vx + 1, last), table, stride, ideal, width, paper)
                )
                continue
            if vx >= last:
                continue
            # d' rounded to float32 like the stored d: a re-read round takes the same decisions
            dn = np.float64(np.float32(user_d(pmap, lists, b, x, vx + 1, table, stride, ideal, width, paper)))
            rho = np.inf if dn == 0 else np.float64(d[b, x]) / dn
            if (rho > th or rho < 1.0) if code_rule else rho > th:  # NaN (no d yet) never moves
                v_out[b, x] = vx + 1
                moved[b, x] = True
                any_moved = True
                d_out[b, x] = np.float32(
                    user_d(pmap, lists, b, x, min(vx + 2, last), table, stride, ideal, width, paper)
                )
        unload_sigma(pmap, sigma, b, d_k)
        if targets and any_moved:
            n_used = 0
            for x in range(M):
                row, srow = lists[b, x, v_out[b, x]], score[x]
                for r in range(L):
                    item = row[r]
                    if np.uint32(item) < nd:  # as in `ensemble._g_states_rows`
                        n_used = ht.add_dense(vals, used, n_used, np.uintp(item), srow[r])
                    elif item >= 0:
                        if n_dense == 0:
                            n_used = ht.add(keys, vals, used, n_used, bits, item, srow[r])
                        else:
                            bad = max(bad, item)  # reported by the caller
            select_top(ws, n_used, out[b], n_dense > 0)
    return bad


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _dkc_kernel(
    lists, v, d, sigma, first, th, code_rule, d_k, g, n_map, v_out, d_out, moved, score, out, n_dense, threads
):
    """`_dkc_rows` over all users, one contiguous chunk per thread; returns each chunk's `bad`."""
    B = lists.shape[0]
    n_chunks = max(1, min(threads, B))
    bad = np.full(n_chunks, -1, dtype=np.int64)
    for c in numba.prange(n_chunks):
        bad[c] = _dkc_rows(
            lists,
            v,
            d,
            sigma,
            first,
            th,
            code_rule,
            d_k,
            g,
            n_map,
            v_out,
            d_out,
            moved,
            score,
            out,
            n_dense,
            c * B // n_chunks,
            (c + 1) * B // n_chunks,
        )
    return bad


def dkc_step(
    lists: np.ndarray,
    v: np.ndarray,
    d: np.ndarray,
    sigma: np.ndarray,
    epoch: int,
    first: bool,
    params: DKCParams = DKCParams(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One DKC call for a batch of users and all teachers.

    Args:
        lists: (B, M, S, K) int item ids, teacher x's top-K at state s, best first, -1 padded (any
            strides, e.g. a transposed (M, S, B, K) buffer). Only the states v+1 and v+2 of each
            teacher (v+1 on the first call) are read.
        v: (B, M) int current state indices (0..S-1).
        d: (B, M) float last discrepancies (NaN before the first call; ignored by the first call).
        sigma: (B, >= d_k) int the student's top unobserved items, best first, -1 padded.
        epoch: the student epoch e of this call (sets the decayed threshold).
        first: whether this is the first DKC call (compute d, nobody moves).
        params: `DKCParams`.

    Returns:
        (v_new (B, M) int8, d_new (B, M) float32, moved (B, M) bool).
    """
    return _step(lists, v, d, sigma, epoch, first, params, None, None, None)[:3]


def dkc_step_targets(
    lists: np.ndarray,
    v: np.ndarray,
    d: np.ndarray,
    sigma: np.ndarray,
    epoch: int,
    first: bool,
    params: DKCParams,
    prev: np.ndarray,
    temperature: float = 10.0,
    weights: np.ndarray | None = None,
    n_items: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`dkc_step`, then `rebuild_targets` on its result, in one pass over the users.

    Each user's new targets are built right after its own step, while its lists are in cache;
    the result is the two calls' exactly. prev: (B, k) previous targets (-1 padded); n_items: the
    catalogue size when known (a dense score table, ids checked: see `ensemble.ensemble_topk`).

    Returns:
        (v_new, d_new, moved, targets (B, k) int32).
    """
    return _step(
        lists,
        v,
        d,
        sigma,
        epoch,
        first,
        params,
        prev,
        score_table(np.asarray(lists).shape[3], as_weights(weights, np.asarray(lists).shape[1]), temperature),
        n_items,
    )


def _step(lists, v, d, sigma, epoch, first, params, prev, score, n_items):
    """The body of `dkc_step` / `dkc_step_targets` (prev and score None: no targets)."""
    if params.move_rule not in MOVE_RULES:
        raise ValueError(f"move_rule must be one of {MOVE_RULES}, got {params.move_rule!r}")
    lists = np.asarray(lists)
    B, M, S, L = lists.shape
    last = S - 1
    v = np.asarray(v)
    if v.shape != (B, M) or (v.size and (v.min() < 0 or v.max() > last)):
        raise ValueError(f"v must be (B, M) = {(B, M)} in 0..{last}")
    v_new = v.astype(np.int8)
    d_new = np.asarray(d, dtype=np.float32).copy()
    moved = np.zeros((B, M), dtype=bool)
    if prev is None:
        out, score = np.empty((B, 0), dtype=np.int32), np.zeros((1, 1), dtype=np.int64)
    else:
        out = np.array(prev, dtype=np.int32, copy=True, order="C")
        if out.shape[0] != B:
            raise ValueError(f"prev must hold one row of targets per user ({B}), got shape {out.shape}")
    if B == 0 or M == 0:
        return v_new, d_new, moved, out
    g = gains(params.d_k, L, params.d_variant, params.d_lambda)
    sigma = np.asarray(sigma).astype(np.int32, copy=False)
    bad = _dkc_kernel(
        lists.astype(np.int32, copy=False),
        v_new.copy(),
        d_new.copy(),
        sigma,
        bool(first),
        threshold(epoch, params),
        params.move_rule == "code",
        params.d_k,
        g.astuple(),
        map_size(sigma),
        v_new,
        d_new,
        moved,
        score,
        out,
        dense_size(n_items),
        numba.get_num_threads(),
    )
    check_items(bad, n_items)
    return v_new, d_new, moved, out


def rebuild_targets(
    lists: np.ndarray,
    v: np.ndarray,
    changed: np.ndarray,
    prev: np.ndarray,
    k: int,
    temperature: float = 10.0,
    weights: np.ndarray | None = None,
    n_items: int | None = None,
) -> np.ndarray:
    """T_u = g of the chosen states for users whose selection changed; the previous targets otherwise.

    Args:
        lists: (B, M, S, K) trajectories (any strides); v: (B, M) chosen states; changed: (B,) bool;
        prev: (B, k) previous targets (-1 padded); n_items: as in `ensemble.ensemble_topk`.

    Returns:
        (B, k) int32 targets.
    """
    lists = np.asarray(lists)
    out = np.array(prev, dtype=np.int32, copy=True)
    if len(out) and k and np.any(changed):
        table = score_table(lists.shape[3], as_weights(weights, lists.shape[1]), temperature)
        check_items(
            g_states_kernel(
                lists.astype(np.int32, copy=False),
                np.asarray(v).astype(np.int64),
                np.asarray(changed, dtype=bool),
                table,
                out,
                dense_size(n_items),
                numba.get_num_threads(),
            ),
            n_items,
        )
    return out


def state_means(v_sum: np.ndarray, n_users: int) -> np.ndarray:
    """(M,) mean state index per teacher from per-teacher sums over users."""
    return np.asarray(v_sum, dtype=np.float64) / max(int(n_users), 1)


def switch_fired(means: np.ndarray, final_state: int) -> bool:
    """The switch: every teacher's mean state, rounded to 2 decimals, equals the final state."""
    return bool(np.all(np.round(np.asarray(means, dtype=np.float64), 2) == final_state))
