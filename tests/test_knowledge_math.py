"""The knowledge math (ensemble g, P+, D@K, DKC, switch) against deliberately plain per-user loops.

Every reference below is written from METHOD.md §3 one user and one teacher at a time, with Python
scalars, and shares no code with hetcomp_dist.knowledge.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hetcomp_dist.knowledge.discrepancy import discrepancies, discrepancy
from hetcomp_dist.knowledge.dkc import (
    DKCParams,
    dkc_step,
    dkc_step_targets,
    rebuild_targets,
    switch_fired,
    threshold,
)
from hetcomp_dist.knowledge.ensemble import ensemble_topk, ensemble_topk_csr


# ------------------------------------------------------------------------------ plain references
def ref_g(lists_u, k, T=10.0, w=None):
    """One user: lists_u is M lists (best first, -1 = padding)."""
    M = len(lists_u)
    w = [1.0] * M if w is None else [float(x) for x in w]
    terms = {}
    for x in range(M):
        for r, item in enumerate(lists_u[x]):
            if item >= 0:
                terms.setdefault(int(item), []).append((r, x))
    # math.fsum: the correctly rounded sum, so only equal rank sets tie (whatever the summation order)
    score = {item: math.fsum(w[x] * math.exp(-r / T) for r, x in ts) for item, ts in terms.items()}
    ranked = sorted(score, key=lambda i: (-score[i], i))[:k]
    return ranked + [-1] * (k - len(ranked))


def ref_D(sigma_u, pi_u, d_k=50, variant="code", lam=10.0):
    gain = [2 ** math.exp(-t / lam) - 1 for t in range(d_k)]
    idcg = 0.0
    for t in range(d_k):
        idcg += gain[t] / math.log2(t + 2)
    dcg = 0.0
    sig = list(sigma_u[:d_k])
    if variant == "code":
        top = set(int(i) for i in pi_u[:d_k] if i >= 0)
        for t, item in enumerate(sig):
            if item >= 0 and int(item) in top:
                dcg += gain[t] / math.log2(t + 2)
    else:
        rank = {int(i): r for r, i in enumerate(pi_u) if i >= 0}
        for t, item in enumerate(sig):
            if item >= 0 and int(item) in rank:
                dcg += (2 ** math.exp(-rank[int(item)] / lam) - 1) / math.log2(t + 2)
    return 1.0 - dcg / idcg


def ref_dkc(lists, v, d, sigma, epoch, first, p: DKCParams):
    B, M, S, _ = lists.shape
    last = S - 1
    v = [[int(x) for x in row] for row in v]
    d = [[float(np.float32(x)) for x in row] for row in d]

    def D(b, x, s):
        return float(np.float32(ref_D(sigma[b], lists[b, x, s], p.d_k, p.d_variant, p.d_lambda)))

    th = p.alpha * p.decay ** (epoch // p.period) if p.move_rule == "code" else p.alpha
    for b in range(B):
        for x in range(M):
            if first:
                d[b][x] = D(b, x, min(v[b][x] + 1, last))
                continue
            if v[b][x] == last:
                continue
            dn = D(b, x, v[b][x] + 1)
            rho = math.inf if dn == 0 else d[b][x] / dn
            move = (rho > th or rho < 1) if p.move_rule == "code" else rho > th
            if move:
                v[b][x] += 1
                d[b][x] = D(b, x, min(v[b][x] + 1, last))
    return np.array(v), np.array(d)


# --------------------------------------------------------------------------------- random inputs
def make_batch(seed, B=120, M=5, S=4, K=20, n_items=70, d_k=10):
    """Per-user trajectories that exclude train items, with the edge cases of the spec mixed in.

    Returns lists (B, M, S, K), train (list of sets), sigma (B, d_k), kind (B,) of the case per user.
    """
    rng = np.random.default_rng(seed)
    lists = np.full((B, M, S, K), -1, dtype=np.int32)
    sigma = np.full((B, d_k), -1, dtype=np.int32)
    train, kinds = [], []
    for b in range(B):
        kind = [
            "random",
            "few_unobserved",
            "mirror_ties",
            "disjoint_ties",
            "sigma_is_teacher",
            "short_sigma",
        ][b % 6]
        kinds.append(kind)
        n_tr = (
            rng.integers(n_items - K // 2, n_items - 3) if kind == "few_unobserved" else rng.integers(1, 12)
        )
        tr = set(rng.choice(n_items, size=n_tr, replace=False).tolist())
        train.append(tr)
        cand = np.array(sorted(set(range(n_items)) - tr), dtype=np.int32)
        for s in range(S):
            base = rng.permutation(cand)[:K]
            for x in range(M):
                if kind == "mirror_ties":  # teacher pairs (p, reversed p): items r and L-1-r tie
                    lst = base if x % 2 == 0 else base[::-1]
                    if M % 2 and x == M - 1:
                        lst = base[:0]
                elif kind == "disjoint_ties":  # each teacher its own items: M-way ties at every rank
                    chunk = len(cand) // M
                    lst = rng.permutation(cand)[x * chunk : (x + 1) * chunk][:K] if chunk else base[:0]
                    lst = lst[: rng.integers(0, len(lst) + 1)] if rng.random() < 0.3 else lst
                else:
                    lst = (
                        rng.permutation(cand)[: rng.integers(1, K + 1)]
                        if rng.random() < 0.2
                        else rng.permutation(cand)[:K]
                    )
                lists[b, x, s, : len(lst)] = lst
        if kind == "sigma_is_teacher":  # d' = 0 for that teacher/state
            x, s = rng.integers(0, M), rng.integers(0, S)
            src = lists[b, x, s, :d_k]
            sigma[b, : len(src)] = src
        else:
            n_sig = rng.integers(0, d_k + 1) if kind == "short_sigma" else d_k
            perm = rng.permutation(cand)[:n_sig]
            sigma[b, : len(perm)] = perm
    return lists, train, sigma, np.array(kinds)


# ------------------------------------------------------------------------------------ ensemble g
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_items", [None, 70])  # the hash table; the dense per-item table (ids < 70)
def test_ensemble_matches_per_user_loop(seed, weighted, n_items):
    lists, _, _, _ = make_batch(seed)
    M = lists.shape[1]
    w = np.random.default_rng(seed).uniform(0.2, 2.0, M) if weighted else None
    for k in (5, 20, 80):  # 80 > most unions: -1 padding
        state = np.random.default_rng(seed + k).integers(0, lists.shape[2], size=lists.shape[:2])
        chosen = lists[np.arange(len(lists))[:, None], np.arange(M)[None, :], state]  # (B, M, K)
        got = ensemble_topk(chosen, k, 10.0, w, n_items)
        want = np.array([ref_g(chosen[b], k, 10.0, w) for b in range(len(chosen))])
        np.testing.assert_array_equal(got, want)


def test_ensemble_hand_worked_tie():
    # teacher 0: [7, 3], teacher 1: [3, 7] -> 3 and 7 tie (1 + e^-0.1 each): smaller id first;
    # 9 alone at rank 0
    lists = np.array([[[7, 3, -1], [3, 7, -1], [9, -1, -1]]], dtype=np.int32)
    np.testing.assert_array_equal(ensemble_topk(lists, 4), [[3, 7, 9, -1]])
    # temperature matters: 5 at ranks (2, 2) scores 2 e^{-2/T}, items at rank 0 once score 1 (1, 3, 9 tie),
    # items at rank 1 once score e^{-1/T}: T = 2 -> 1, 3, 9 (1.0), 5 (.736), 2, 4 (.607); T = 10 -> 5 first
    lists = np.array([[[1, 2, 5], [3, 4, 5], [9, -1, -1]]], dtype=np.int32)
    np.testing.assert_array_equal(ensemble_topk(lists, 7, temperature=2.0), [[1, 3, 9, 5, 2, 4, -1]])
    np.testing.assert_array_equal(ensemble_topk(lists, 7, temperature=10.0), [[5, 1, 3, 9, 2, 4, -1]])
    # weights: w = (1, 1, 3) lifts 9 to the top
    assert ensemble_topk(lists, 1, weights=np.array([1.0, 1.0, 3.0]))[0, 0] == 9


def test_ensemble_empty_and_padding():
    lists = np.full((3, 2, 4), -1, dtype=np.int32)
    lists[1, 0, :2] = [5, 6]
    out = ensemble_topk(lists, 3)
    np.testing.assert_array_equal(out, [[-1, -1, -1], [5, 6, -1], [-1, -1, -1]])
    assert ensemble_topk(np.zeros((0, 2, 4), np.int32), 3).shape == (0, 3)


# --------------------------------------------------------------------------------------------- P+
@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("n_items", [None, 5000])
def test_positive_set_matches_per_user_loop(seed, n_items):
    """P+ = the train items by g over each teacher's observed order, at most pos_k (variable length)."""
    rng = np.random.default_rng(seed)
    B, M, pos_k = 150, 6, 10
    obs = []
    for b in range(B):
        n = [0, 1, 3, 9, 10, 11, 40, 300][b % 8]  # fewer than 10, exactly 10, heavy users
        items = rng.choice(5000, size=n, replace=False)
        obs.append([rng.permutation(items) for _ in range(M)])
    csrs = []
    for x in range(M):
        lengths = np.array([len(obs[b][x]) for b in range(B)])
        off = np.concatenate([[0], np.cumsum(lengths)])
        val = np.concatenate([obs[b][x] for b in range(B)]).astype(np.int32)
        csrs.append((off, val))
    got = ensemble_topk_csr(
        csrs, pos_k, n_items=n_items
    )  # heavy users (300 items) size their own hash tables
    want = np.array([ref_g([list(o) for o in obs[b]], pos_k) for b in range(B)])
    np.testing.assert_array_equal(got, want)
    assert (got[np.arange(B) % 8 == 1] >= 0).sum(1).max() == 1  # a 1-item user has a 1-item P+


# ------------------------------------------------------------------------------------------ D@K
@pytest.mark.parametrize("variant", ["code", "paper"])
def test_discrepancy_matches_per_user_loop(variant):
    lists, _, sigma, kinds = make_batch(5, d_k=10)
    B, M, S, K = lists.shape
    for s in range(S):
        pi = lists[:, 1, s]
        got = discrepancy(sigma, pi, d_k=10, variant=variant)
        want = np.array([ref_D(sigma[b], pi[b], 10, variant) for b in range(B)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)  # fixed-point weights: 2^-40 resolution
        assert np.all((got >= 0) & (got <= 1))
    # sigma copied from a full teacher state's top-d_k: exactly 0 for that state (a copied padded list
    # is not 0: padded positions are misses)
    b = np.nonzero(kinds == "sigma_is_teacher")[0]
    hits = [
        (bb, x, s)
        for bb in b
        for x in range(M)
        for s in range(S)
        if np.array_equal(lists[bb, x, s, :10], sigma[bb]) and sigma[bb].min() >= 0
    ]
    assert hits
    for bb, x, s in hits:
        assert discrepancy(sigma[bb : bb + 1], lists[bb : bb + 1, x, s], 10, variant)[0] == 0.0


def test_discrepancy_hand_worked():
    # d_k = 2: gains g_0 = 1, g_1 = 2^{e^-0.1} - 1; sigma = [a, b], teacher top-2 = [b, c]: only t = 1 hits
    g1 = 2 ** math.exp(-0.1) - 1
    w0, w1 = 1.0, g1 / math.log2(3)
    d = discrepancy(np.array([[4, 5]]), np.array([[5, 6, 4]]), d_k=2, variant="code")[0]
    assert d == pytest.approx(1 - w1 / (w0 + w1), abs=1e-12)
    # paper: a has teacher rank 2, b rank 0 -> gains (2^{e^-0.2}-1) at t=0 and 1 at t=1
    dp = discrepancy(np.array([[4, 5]]), np.array([[5, 6, 4]]), d_k=2, variant="paper")[0]
    assert dp == pytest.approx(1 - ((2 ** math.exp(-0.2) - 1) + 1 / math.log2(3)) / (w0 + w1), abs=1e-12)
    # PAD never matches PAD
    assert discrepancy(np.array([[-1, -1]]), np.array([[-1, -1]]), d_k=2)[0] == 1.0
    # several teachers at once, one student list per user
    sig = np.array([[4, 5], [7, -1]])
    pis = np.array([[[5, 6, 4], [4, 5, -1], [9, 8, 1]], [[7, 1, 2], [1, 7, 2], [-1, -1, -1]]])
    np.testing.assert_allclose(
        discrepancies(sig, pis, 2),
        [[1 - w1 / (w0 + w1), 0.0, 1.0], [1 - w0 / (w0 + w1), 1 - w0 / (w0 + w1), 1.0]],
        atol=1e-12,
    )


# ------------------------------------------------------------------------------------------- DKC
def _states(seed, B, M, S):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, S, size=(B, M))
    v[::7] = S - 1  # all teachers already final
    v[1::7] = 0
    return v


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("rule,variant", [("code", "code"), ("code", "paper"), ("paper", "code")])
def test_dkc_step_matches_per_user_loop(seed, rule, variant):
    lists, _, sigma, _ = make_batch(seed + 10, d_k=10)
    B, M, S, K = lists.shape
    p = DKCParams(d_k=10, d_variant=variant, move_rule=rule)
    # the first call: d for v+1, nobody moves
    v0 = _states(seed, B, M, S)
    v1, d1, moved = dkc_step(lists, v0, np.full((B, M), np.nan), sigma, 10, True, p)
    rv, rd = ref_dkc(lists, v0, np.full((B, M), np.nan), sigma, 10, True, p)
    np.testing.assert_array_equal(v1, v0)
    assert not moved.any()
    np.testing.assert_allclose(d1, rd, rtol=0, atol=1e-6)
    # later calls at several epochs (threshold above and below 1), new student lists each time
    v, d = v1, d1
    rng = np.random.default_rng(seed)
    for epoch in (20, 60, 150, 400):
        sig = sigma if epoch == 20 else _shuffle_sigma(rng, sigma, lists)
        v_new, d_new, moved = dkc_step(lists, v, d, sig, epoch, False, p)
        rv, rd = ref_dkc(lists, v, d, sig, epoch, False, p)
        np.testing.assert_array_equal(v_new, rv)
        np.testing.assert_allclose(d_new, rd, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(moved, v_new != v)
        assert np.all(v_new[v == S - 1] == S - 1)  # final teachers never move
        np.testing.assert_array_equal(d_new[~moved], np.asarray(d, np.float32)[~moved])  # others keep d
        v, d = v_new, d_new
    assert (v > v0).any() and (v == S - 1).any()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "rule,variant,weighted", [("code", "code", False), ("code", "paper", True), ("paper", "code", True)]
)
@pytest.mark.parametrize("n_items", [None, 70])
def test_dkc_step_targets_matches_per_user_loop(seed, rule, variant, weighted, n_items):
    """The fused step + targets: v and d of the per-user DKC loop, and for each user with a mover
    the per-user g of its new states (previous targets kept otherwise), over several calls."""
    lists, _, sigma, _ = make_batch(seed + 50, d_k=10)
    B, M, S, K = lists.shape
    k = K + 3  # longer than one list: the union's order past K, PAD-filled where it runs out
    w = np.random.default_rng(seed).uniform(0, 2, M) if weighted else None
    if weighted:
        w[1] = 0.0
    p = DKCParams(d_k=10, d_variant=variant, move_rule=rule)
    v = _states(seed, B, M, S)
    d = np.full((B, M), np.nan)
    prev = np.full((B, k), -7, dtype=np.int32)
    rng = np.random.default_rng(seed + 1)
    for epoch, first in ((10, True), (20, False), (60, False), (400, False)):
        sig = sigma if epoch <= 20 else _shuffle_sigma(rng, sigma, lists)
        v_new, d_new, moved, targets = dkc_step_targets(
            lists, v, d, sig, epoch, first, p, prev, 10.0, w, n_items
        )
        rv, rd = ref_dkc(lists, v, d, sig, epoch, first, p)
        np.testing.assert_array_equal(v_new, rv)
        np.testing.assert_allclose(d_new, rd, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(moved, v_new != v)
        for b in range(B):
            want = (
                ref_g([lists[b, x, v_new[b, x]] for x in range(M)], k, 10.0, w) if moved[b].any() else prev[b]
            )
            np.testing.assert_array_equal(targets[b], want)
        assert not first or not moved.any()
        v, d, prev = v_new, d_new, targets
    assert (v == S - 1).any() and (prev != -7).any()


def _shuffle_sigma(rng, sigma, lists):
    """New student lists: mostly re-drawn from teacher items (overlap), some copies of a teacher state."""
    out = sigma.copy()
    B, M, S, K = lists.shape
    for b in range(B):
        pool = lists[b].ravel()
        pool = np.unique(pool[pool >= 0])
        if rng.random() < 0.15:
            src = lists[b, rng.integers(M), rng.integers(S), : out.shape[1]]
            out[b] = -1
            out[b, : len(src)] = src
        elif len(pool):
            pick = rng.permutation(pool)[: out.shape[1]]
            out[b] = -1
            out[b, : len(pick)] = pick
    return out


def test_dkc_zero_denominator_and_final():
    """d' = 0 -> rho = inf -> move; d = d' exactly -> rho = 1 -> stay (th > 1); v = 3 never moves."""
    d_k = 2
    lists = np.array([[[[1, 2, 3, 4], [5, 6, 7, 8], [1, 5, 2, 6], [9, 8, 7, 6]]] * 3])  # (1, 3, 4, 4)
    lists = np.repeat(lists, 2, axis=0)  # B = 2
    sigma = np.array([[5, 6], [1, 2]])
    v = np.array([[0, 0, 3], [0, 2, 3]])
    d = np.array([[0.5, 0.0, 0.7], [1.0, 0.4, 0.7]])
    p = DKCParams(d_k=d_k)
    v_new, d_new, moved = dkc_step(lists, v, d, sigma, 10, False, p)
    # user 0: sigma == state-1 top-2 -> d' = 0 -> both non-final teachers move, even with d = 0
    # user 1: teacher 0: d' = D([1,2], [5,6]) = 1 = d -> rho = 1 -> stays; teacher 1: d' = D([1,2],[9,8]) = 1,
    #         rho = 0.4 < 1 -> moves to 3 and d = D(sigma, pi^3) = 1
    np.testing.assert_array_equal(v_new, [[1, 1, 3], [0, 3, 3]])
    assert d_new[0, 2] == np.float32(0.7) and d_new[1, 2] == np.float32(0.7)
    assert d_new[1, 0] == np.float32(1.0) and d_new[1, 1] == 1.0
    assert d_new[0, 0] == pytest.approx(discrepancy(sigma[:1], lists[:1, 0, 2], d_k)[0])
    # paper rule: rho = 1 and rho < 1 both stay; only rho > alpha moves
    v_p, _, _ = dkc_step(lists, v, d, sigma, 10, False, DKCParams(d_k=d_k, move_rule="paper"))
    np.testing.assert_array_equal(v_p, [[1, 1, 3], [0, 2, 3]])


def test_threshold_decay():
    p = DKCParams()
    assert threshold(10, p) == pytest.approx(1.05 * 0.995)
    assert threshold(19, p) == pytest.approx(1.05 * 0.995)
    assert threshold(200, p) == pytest.approx(1.05 * 0.995**20)
    assert threshold(200, DKCParams(move_rule="paper")) == 1.05


def test_rebuild_targets_only_changed_users():
    lists, _, _, _ = make_batch(7)
    B, M, S, K = lists.shape
    v = _states(7, B, M, S)
    changed = np.arange(B) % 3 == 0
    prev = np.full((B, K), 12345, dtype=np.int32)
    out = rebuild_targets(lists, v, changed, prev, K)
    for b in range(B):
        if changed[b]:
            want = ref_g([lists[b, x, v[b, x]] for x in range(M)], K)
            np.testing.assert_array_equal(out[b], want)
        else:
            assert np.all(out[b] == 12345)


def test_switch():
    assert switch_fired([3.0, 2.996, 3.0], 3)  # rounds to 3.00
    assert not switch_fired([3.0, 2.994, 3.0], 3)  # 2.99
    assert not switch_fired([0.0] * 6, 3)
    assert switch_fired([3.0] * 6, 3)
