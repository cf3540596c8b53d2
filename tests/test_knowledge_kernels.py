"""The compiled knowledge kernels on the inputs their implementation choices make risky: thread
chunks, strided (transposed) buffers, the position map's bounds, the hash table's probing, the
bucket selection's ties and zero scores, and the states a shard task skips reading.

References are the plain per-user loops of test_knowledge_math (no shared code with the package).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from test_knowledge_math import _states, make_batch, ref_D, ref_dkc, ref_g

from hetcomp_dist.knowledge.discrepancy import discrepancies
from hetcomp_dist.knowledge.dkc import DKCParams, dkc_step, dkc_step_targets, rebuild_targets
from hetcomp_dist.knowledge.ensemble import DENSE_MAX_ITEMS, dense_size, ensemble_topk, ensemble_topk_csr
from hetcomp_dist.knowledge.rounds import needed_states


def _with_threads(n, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


def test_any_thread_count_gives_the_same_result():
    """Users are split into one chunk per thread: chunk edges must not change anything."""
    lists, _, sigma, _ = make_batch(21, B=257)  # not a multiple of 2 or 3 threads
    B, M, S, K = lists.shape
    v = _states(21, B, M, S)
    d = np.random.default_rng(21).uniform(0, 1, (B, M))
    p = DKCParams(d_k=10)

    def run():
        vb, db, moved = dkc_step(lists, v, d, sigma, 30, False, p)
        return (
            vb,
            db,
            moved,
            rebuild_targets(lists, vb, moved.any(1), np.full((B, K), -7, np.int32), K),
            *dkc_step_targets(lists, v, d, sigma, 30, False, p, np.full((B, K), -7, np.int32)),
            ensemble_topk(lists[:, :, 0], 15),
            discrepancies(sigma, lists[:, :, 1], 10, "paper"),
            dkc_step_targets(lists, v, d, sigma, 30, False, p, np.full((B, K), -7, np.int32), n_items=70)[3],
            ensemble_topk(lists[:, :, 0], 15, n_items=70),
        )  # the dense tables (make_batch: ids < 70)

    one = _with_threads(1, run)
    for n in (2, 3):
        for a, b in zip(one, _with_threads(n, run)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1])
def test_transposed_buffer_matches_per_user_loop(seed):
    """The shard path's layout: a (M, S, B, K) buffer seen as (B, M, S, K), and a batch slice of it."""
    lists, _, sigma, _ = make_batch(seed + 30, d_k=10)
    B, M, S, K = lists.shape
    buf = np.ascontiguousarray(lists.transpose(1, 2, 0, 3))
    view = buf.transpose(2, 0, 1, 3)[7:]
    assert not view.flags.c_contiguous
    v, d = _states(seed, B, M, S)[7:], np.random.default_rng(seed).uniform(0, 1, (B - 7, M))
    p = DKCParams(d_k=10)
    vb, db, moved = dkc_step(view, v, d, sigma[7:], 40, False, p)
    rv, rd = ref_dkc(lists[7:], v, d, sigma[7:], 40, False, p)
    np.testing.assert_array_equal(vb, rv)
    np.testing.assert_allclose(db, rd, rtol=0, atol=1e-6)
    got = rebuild_targets(view, vb, moved.any(1), np.full((B - 7, K), -7, np.int32), K)
    for b in np.nonzero(moved.any(1))[0]:
        np.testing.assert_array_equal(got[b], ref_g([lists[7 + b, x, vb[b, x]] for x in range(M)], K))
    assert (got[~moved.any(1)] == -7).all()
    fused = dkc_step_targets(view, v, d, sigma[7:], 40, False, p, np.full((B - 7, K), -7, np.int32))
    for a, b in zip(fused, (vb, db, moved, got)):
        np.testing.assert_array_equal(a, b)


def test_discrepancy_position_map_bounds():
    """Teacher items beyond every student item, ids near 2^31, PADs anywhere in sigma."""
    rng = np.random.default_rng(4)
    B, L, d_k = 40, 30, 12
    big = 2**31 - 2
    sigma = rng.choice(1000, size=(B, d_k), replace=False).astype(np.int32)
    sigma[::3, 5] = -1  # a PAD inside sigma: a miss at that position, never a match for a teacher PAD
    sigma[::7] = -1  # a user without student items
    pis = np.full((B, 2, L), -1, dtype=np.int32)
    for b in range(B):
        others = rng.choice(np.arange(1000, 2000), 20, replace=False)
        cand = np.concatenate([sigma[b][sigma[b] >= 0], [big, big - 1, 5000], others])
        pis[b, 0, :20] = rng.permutation(cand)[:20]
        pis[b, 1, :L] = np.concatenate([[big], rng.choice(2000, L - 1, replace=False)])
    for variant in ("code", "paper"):
        got = discrepancies(sigma, pis, d_k, variant)
        want = np.array([[ref_D(sigma[b], pis[b, x], d_k, variant) for x in range(2)] for b in range(B)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert (discrepancies(sigma[::7], pis[::7], d_k) == 1.0).all()


def test_dkc_zero_d_prime_nan_and_final_rows():
    """d' = 0 moves even from d = 0; a NaN d (no first call yet) with d' > 0 never moves; final
    teachers keep d."""
    K, d_k = 6, 3
    lists = np.tile(np.arange(4 * K, dtype=np.int32).reshape(1, 1, 4, K), (3, 2, 1, 1))
    sigma = np.array([[6, 7, 8], [6, 7, 99], [0, 1, 2]], dtype=np.int32)  # row 0: state 1's top-3, d' = 0
    v = np.array([[0, 3], [0, 0], [3, 3]])
    d = np.array([[0.0, 0.25], [np.nan, np.nan], [0.5, 0.75]])
    vb, db, moved = dkc_step(lists, v, d, sigma, 10, False, DKCParams(d_k=d_k))
    rv, rd = ref_dkc(lists, v, d, sigma, 10, False, DKCParams(d_k=d_k))
    np.testing.assert_array_equal(vb, rv)
    np.testing.assert_array_equal(vb, [[1, 3], [0, 0], [3, 3]])
    assert db[0, 1] == np.float32(0.25) and np.isnan(db[1]).all() and (db[2] == np.float32([0.5, 0.75])).all()
    assert db[0, 0] == np.float32(rd[0, 0]) == 1.0  # D against state 2, which shares nothing with sigma


@pytest.mark.parametrize("n_items", [None, 3000])
def test_ensemble_zero_weights_large_ids_and_ties(n_items):
    """Zero-weight teachers' items score exactly 0 (ordered by id after every positive score; in the
    dense table, a present item with score 0 is still in the union), ids up to 2^31 - 1 through the
    hash table, M-way exact ties at every rank."""
    rng = np.random.default_rng(8)
    B, M, L = 60, 4, 25
    lists = np.full((B, M, L), -1, dtype=np.int32)
    for b in range(B):
        pool = rng.choice(n_items or 2**31 - 1, size=M * L, replace=False).astype(np.int32)
        if b % 3 == 0:  # disjoint lists: items at the same rank tie exactly
            lists[b] = pool.reshape(M, L)
        else:
            for x in range(M):
                n = rng.integers(0, L + 1)
                lists[b, x, :n] = rng.permutation(pool[: 2 * L])[:n]
    w = np.array([1.0, 0.0, 2.5, 0.0])
    for k in (1, 10, M * L):
        got = ensemble_topk(lists, k, 10.0, w, n_items)
        want = np.array([ref_g(lists[b], k, 10.0, w) for b in range(B)])
        np.testing.assert_array_equal(got, want)


def test_dense_tables_reject_ids_outside_the_catalogue():
    """With n_items, every kernel checks ids (the dense table is indexed by them): an id >= n_items
    is a ValueError, not a write past the table; without n_items (hash table) there is no bound;
    a catalogue past DENSE_MAX_ITEMS hashes, with the same result."""
    rng = np.random.default_rng(11)
    B, M, S, K = 40, 3, 4, 12
    lists = np.stack(
        [np.stack([rng.permutation(200)[:K] for _ in range(M * S)]).reshape(M, S, K) for _ in range(B)]
    )
    lists = lists.astype(np.int32)
    lists[17, 1, :, 0] = 250  # one user, one teacher, every state, at rank 0 (in every top-K)
    sigma = rng.permutation(200)[None, :10].repeat(B, 0).astype(np.int32)
    v, d = np.zeros((B, M), np.int64), np.full((B, M), 0.5)
    prev = np.full((B, K), -1, np.int32)
    p = DKCParams(d_k=10, alpha=0.0)  # everybody moves: every user's targets are built
    calls = {
        "ensemble_topk": lambda n: ensemble_topk(lists[:, :, 0], K, n_items=n),
        "ensemble_topk_csr": lambda n: ensemble_topk_csr(
            [(np.arange(B + 1) * K, lists[:, x, 0].ravel()) for x in range(M)], K, n_items=n
        ),
        "rebuild_targets": lambda n: rebuild_targets(lists, v + 1, np.ones(B, bool), prev, K, n_items=n),
        "dkc_step_targets": lambda n: dkc_step_targets(lists, v, d, sigma, 30, False, p, prev, n_items=n)[3],
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="item id 250 is >= n_items = 200"):
            call(200)
        hashed = call(None)
        np.testing.assert_array_equal(call(251), hashed, err_msg=name)
        assert 250 in hashed[17], name
    assert dense_size(DENSE_MAX_ITEMS) == DENSE_MAX_ITEMS and dense_size(DENSE_MAX_ITEMS + 1) == 0
    assert dense_size(None) == 0 == dense_size(0)
    with pytest.raises(ValueError, match="n_items must be >= 0"):
        dense_size(-1)


def test_ensemble_csr_very_uneven_users():
    """One user with thousands of entries beside empty and one-item users (per-user table sizes)."""
    rng = np.random.default_rng(9)
    sizes = [0, 1, 2500, 3, 0, 60]
    csrs = []
    for _x in range(3):
        vals, off = [], [0]
        for n in sizes:
            vals.append(rng.choice(10**6, size=n, replace=False).astype(np.int32))
            off.append(off[-1] + n)
        csrs.append((np.array(off), np.concatenate(vals)))
    got = ensemble_topk_csr(csrs, 40)
    for b in range(len(sizes)):
        lists_b = [csrs[x][1][csrs[x][0][b] : csrs[x][0][b + 1]] for x in range(3)]
        np.testing.assert_array_equal(got[b], ref_g(lists_b, 40))


@pytest.mark.parametrize("first", [True, False])
def test_needed_states_are_all_a_round_reads(first):
    """Every state outside `needed_states` replaced by other items: the step and the targets do not
    change, so a shard task may leave those files unread."""
    lists, _, sigma, _ = make_batch(40, d_k=10)
    B, M, S, K = lists.shape
    rng = np.random.default_rng(40)
    v = rng.integers(0, 2, size=(B, M)) + rng.integers(0, 2, size=(1, M))  # some teachers never reach 0 or 3
    d = rng.uniform(0, 1, (B, M))
    p = DKCParams(d_k=10)
    masked = lists.copy()
    for x, states in enumerate(needed_states(v, first)):
        for s in set(range(S)) - set(states):
            masked[:, x, s] = rng.integers(10**6, 2 * 10**6, size=(B, K))
    assert (masked != lists).any()
    outs = []
    for arr in (lists, masked):
        vb, db, moved = dkc_step(arr, v, d, sigma, 50, first, p)
        outs.append(
            (
                vb,
                db,
                rebuild_targets(arr, vb, moved.any(1), np.full((B, K), -7, np.int32), K),
                *dkc_step_targets(arr, v, d, sigma, 50, first, p, np.full((B, K), -7, np.int32)),
            )
        )
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
