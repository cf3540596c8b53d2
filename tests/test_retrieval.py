"""Retrieval core and metrics against brute force (numpy argsort, plain loops, hand-worked numbers)."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch

from hetcomp_dist.evaluation.faiss_exact import BLAS_THRESHOLD, BlockedFlatIndex, faiss_blas
from hetcomp_dist.evaluation.metrics import MetricSums, recall_ndcg
from hetcomp_dist.evaluation.retrieval import (
    PAD,
    MipsIVFIndex,
    PrunedIndex,
    build_index,
    excluded_mask,
    first_k_kept,
    mips_items,
    rescore,
    search_excluding,
    topk_from_scores,
    topk_scorer,
)


def random_case(seed: int, B: int = 60, n_items: int = 400, d: int = 6):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, d)).astype(np.float32)
    items = rng.normal(size=(n_items, d)).astype(np.float32)
    sizes = rng.integers(0, 120, B)
    sizes[0] = n_items - 3  # a user with almost everything excluded: fewer than k left
    ex = [rng.choice(n_items, size=s, replace=False) for s in sizes]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return q, items, ex, off, np.concatenate(ex).astype(np.int32)


def brute_topk(q, items, ex, k, metric):
    s = (
        q.astype(np.float64) @ items.T.astype(np.float64)
        if metric == "ip"
        else -((q[:, None, :].astype(np.float64) - items[None].astype(np.float64)) ** 2).sum(-1)
    )
    out = np.full((len(q), k), PAD, np.int32)
    for b in range(len(q)):
        row = s[b].copy()
        row[ex[b]] = -np.inf
        order = [i for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])][:k]
        out[b, : len(order)] = order
    return out


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_search_excluding_equals_brute_force(metric):
    q, items, ex, off, val = random_case(0)
    got = search_excluding(build_index(items, metric), q, 50, off, val)
    ref = brute_topk(q, items, ex, 50, metric)
    np.testing.assert_array_equal(got, ref)
    assert (got[0] == PAD).sum() == 47  # only 3 items left for user 0
    for b in range(len(q)):
        assert not set(got[b].tolist()) & set(ex[b].tolist())


def test_score_paths_equal_brute_force():
    q, items, ex, off, val = random_case(1)
    scores = torch.from_numpy(q) @ torch.from_numpy(items).T
    ref = brute_topk(q, items, ex, 50, "ip")
    np.testing.assert_array_equal(topk_from_scores(scores, 50, off, val), ref)
    users = np.arange(len(q))
    got = topk_scorer(
        lambda u: torch.from_numpy(q[u]) @ torch.from_numpy(items).T, users, 50, off, val, batch_size=7
    )
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall(kind):
    rng = np.random.default_rng(2)
    items = rng.normal(size=(5000, 8)).astype(np.float32)
    q = rng.normal(size=(100, 8)).astype(np.float32)
    empty = np.zeros(101, np.int64), np.zeros(0, np.int32)
    exact = search_excluding(build_index(items, "ip"), q, 20, *empty)
    approx = search_excluding(build_index(items, "ip", kind, ivf_nlist=64, ivf_nprobe=16), q, 20, *empty)
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact)])
    assert recall > 0.9


def unequal_norms_case(seed: int, n_items: int = 20000, d: int = 64, B: int = 300):
    """Items in 50 direction clusters with log-normal norms (sigma 1: a few long items top every list,
    like trained embeddings' popular items), queries from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    dirs = centres[rng.integers(0, 50, n_items)] + 0.7 * rng.normal(size=(n_items, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    items = (dirs * rng.lognormal(0, 1.0, size=(n_items, 1))).astype(np.float32)
    q = (centres[rng.integers(0, 50, B)] + 0.7 * rng.normal(size=(B, d))).astype(np.float32)
    return items, q


def recall_at(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(g[g >= 0], w)) / len(w) for g, w in zip(got, want)]))


def test_mips_items_hand_worked():
    """(x, sqrt(M^2 - |x|^2)): every row of norm M = 5, the item coordinates unchanged."""
    aug, m = mips_items(np.array([[3, 4], [1, 0], [0, 0]], np.float32))
    assert m == 5.0
    np.testing.assert_allclose(aug, [[3, 4, 0], [1, 0, np.sqrt(24)], [0, 0, 5]], rtol=1e-7)


def test_ivf_ip_recall_and_scores_on_unequal_norms():
    """Inner-product IVF is an L2 IVF over the augmented items (`MipsIVFIndex`): recall@100 >= .95
    probing 32 of 512 lists (.97 measured) where FAISS's inner-product IVF keeps .75 of the lists; the
    scores are the inner products, best first."""
    items, q = unequal_norms_case(0)
    exact = q.astype(np.float64) @ items.T.astype(np.float64)
    want = np.argsort(-exact, axis=1, kind="stable")[:, :100]
    index = build_index(items, "ip", "ivf", ivf_nlist=512, ivf_nprobe=32)
    assert isinstance(index, MipsIVFIndex) and index.index.nlist == 512 and index.ntotal == len(items)
    scores, ids = index.search(q, 100)
    assert (ids >= 0).all() and recall_at(ids, want) >= 0.95
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), atol=1e-5 * np.abs(exact).max())
    assert (np.diff(scores, axis=1) <= 0).all()
    plain = faiss.IndexIVFFlat(faiss.IndexFlatIP(64), 64, 512, faiss.METRIC_INNER_PRODUCT)
    plain.train(items)
    plain.add(items)
    plain.nprobe = 32
    assert recall_at(plain.search(q, 100)[1], want) < 0.85  # the case shows the problem the index solves


def test_ivf_ip_search_excluding_excludes_and_fills_short_lists():
    """Rows excluding their own exact top 50 and up to 2000 more (asking for more candidates than the
    probed lists hold), a row left with its 30 last items (in lists far from the query): never an
    excluded item, no PAD while k items remain, the 30 found, and most of each row's exact top-100 after
    exclusion (.85 measured: the fill goes after the ids the probed lists gave, so that a row's list does
    not depend on the k it was asked for; filling by a whole wider search gave .98)."""
    items, q = unequal_norms_case(1, n_items=10000, B=120)
    n = len(items)
    exact = q.astype(np.float64) @ items.T.astype(np.float64)
    rng = np.random.default_rng(1)
    order = np.argsort(-exact, axis=1, kind="stable")
    ex = [
        np.union1d(order[b, :50], rng.choice(n, size=int(rng.integers(0, 2000)), replace=False))
        for b in range(len(q))
    ]
    ex[0] = order[0, :-30]  # 30 items left, its last by inner product
    off = np.concatenate([[0], np.cumsum([len(e) for e in ex])]).astype(np.int64)
    index = build_index(items, "ip", "ivf", ivf_nlist=256, ivf_nprobe=32)
    got = search_excluding(index, q, 100, off, np.concatenate(ex).astype(np.int32))
    assert sorted(got[0, :30].tolist()) == sorted(order[0, -30:].tolist()) and (got[0, 30:] == PAD).all()
    assert (got[1:] != PAD).all()
    for b in range(len(q)):
        row = got[b][got[b] != PAD].tolist()
        assert not set(row) & set(ex[b].tolist()) and len(set(row)) == len(row)
    masked = exact.copy()
    masked[np.repeat(np.arange(len(q)), np.diff(off)), np.concatenate(ex)] = -np.inf
    want = np.argsort(-masked, axis=1, kind="stable")[1:, :100]
    assert recall_at(got[1:], want) >= 0.8


def test_ivf_ip_lists_are_one_prefix_whatever_k():
    """A row's top-50 is the prefix of its top-100, rows filled up included: the export's lists and the
    metrics its evaluation records (at k = 50) are of the same ranking."""
    items, q = unequal_norms_case(1, n_items=10000, B=60)
    rng = np.random.default_rng(2)
    ex = [rng.choice(len(items), size=int(rng.integers(0, 50)), replace=False) for _ in range(len(q))]
    off = np.concatenate([[0], np.cumsum([len(e) for e in ex])]).astype(np.int64)
    # few lists probed: many rows are short at k = 100 and not at k = 50 (29 of 60 differed when a short
    # row was searched again on wider lists instead of filled up)
    index = build_index(items, "ip", "ivf", ivf_nlist=256, ivf_nprobe=2)
    vals = np.concatenate(ex).astype(np.int32)
    top50, top100 = (search_excluding(index, q, k, off, vals) for k in (50, 100))
    assert (top50 == top100[:, :50]).all()


def test_mask_and_first_k_kept_hand_example():
    cand = np.array([[7, 3, 5, 1], [2, PAD, 4, 6]], np.int32)
    mask = excluded_mask(cand, np.array([0, 2, 3]), np.array([3, 1, 6], np.int32), 8)
    assert mask.tolist() == [[False, True, False, True], [False, False, False, True]]
    assert first_k_kept(cand, mask, 2).tolist() == [[7, 5], [2, 4]]
    assert first_k_kept(cand, mask, 3).tolist() == [[7, 5, PAD], [2, 4, PAD]]


def test_mask_against_a_per_row_set():
    """Random candidates (PAD among them) and exclusion sets, some rows empty, some ids repeated."""
    rng = np.random.default_rng(5)
    B, C, n_items = 40, 30, 50
    cand = rng.integers(-1, n_items, (B, C)).astype(np.int32)
    sets = [rng.choice(n_items, rng.integers(0, 12), replace=True) for _ in range(B)]
    off = np.concatenate([[0], np.cumsum([len(x) for x in sets])])
    mask = excluded_mask(cand, off, np.concatenate(sets).astype(np.int32), n_items)
    want = [[int(c) in set(sets[b].tolist()) for c in cand[b]] for b in range(B)]
    assert mask.dtype == bool and mask.tolist() == want


def test_recall_ndcg_hand_worked():
    # user 0: list [4, 9, 2], GT {2, 4, 7}: hits at positions 0 and 2
    # user 1: list [1, 3, 5], GT {5}: hit at position 2; user 2: empty GT -> NaN
    topk = np.array([[4, 9, 2], [1, 3, 5], [0, 1, 2]], np.int32)
    gt_off, gt_val = np.array([0, 3, 4, 4]), np.array([2, 4, 7, 5], np.int32)
    got = recall_ndcg(topk, gt_off, gt_val, ks=(2, 3))
    d = lambda t: 1 / math.log2(t + 2)  # noqa: E731
    assert got["R@2"][0] == pytest.approx(1 / 3) and got["R@3"][0] == pytest.approx(2 / 3)
    assert got["N@2"][0] == pytest.approx(d(0) / (d(0) + d(1)))
    assert got["N@3"][0] == pytest.approx((d(0) + d(2)) / (d(0) + d(1) + d(2)))
    assert got["R@2"][1] == 0 and got["R@3"][1] == 1 and got["N@3"][1] == pytest.approx(d(2) / d(0))
    assert np.isnan(got["R@3"][2])
    sums = MetricSums(ks=(2, 3))
    sums.add(got)
    assert sums.count == 2 and sums.means()["R@3"] == pytest.approx((2 / 3 + 1) / 2)
    other = MetricSums.from_state(sums.to_state(), ks=(2, 3))
    other.merge(sums)
    assert other.count == 4 and other.means()["N@3"] == pytest.approx(sums.means()["N@3"])


def test_recall_ndcg_equals_a_plain_loop():
    rng = np.random.default_rng(5)
    B, K, n_items = 200, 50, 300
    topk = np.stack([rng.choice(n_items, K, replace=False) for _ in range(B)]).astype(np.int32)
    topk[rng.random((B, K)) < 0.05] = PAD
    gts = [rng.choice(n_items, int(rng.integers(0, 30)), replace=False) for _ in range(B)]
    off = np.concatenate([[0], np.cumsum([len(g) for g in gts])])
    got = recall_ndcg(topk, off, np.concatenate(gts).astype(np.int32), ks=(10, 50), n_items=n_items)
    for b in range(B):
        g = set(gts[b].tolist())
        for k in (10, 50):
            if not g:
                assert np.isnan(got[f"R@{k}"][b])
                continue
            hits = [1.0 if i in g else 0.0 for i in topk[b, :k]]
            idcg = sum(1 / math.log2(t + 2) for t in range(min(len(g), k)))
            assert got[f"R@{k}"][b] == pytest.approx(sum(hits) / len(g), abs=1e-12)
            assert got[f"N@{k}"][b] == pytest.approx(
                sum(h / math.log2(t + 2) for t, h in enumerate(hits)) / idcg, abs=1e-12
            )


# ----------------------------------------------------------------------- PrunedIndex (exact, pruned)
def exclusions(rng, B: int, n_items: int, big: int = 2):
    """CSR exclusion sets: random sizes, the first `big` rows excluding all but 0, 1, 2... items."""
    sizes = rng.integers(0, min(n_items, 40) + 1, B)
    for b in range(min(big, B)):
        sizes[b] = max(n_items - b * 3, 0)  # row 0: everything excluded; row 1: 3 items left
    ex = [rng.choice(n_items, size=s, replace=False) for s in sizes]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return ex, off, np.concatenate(ex + [np.zeros(0, int)]).astype(np.int32)


def pruned_case(seed: int, integer: bool):
    """Items whose norms vary a lot (like trained popularity), or small integers (exact ties)."""
    rng = np.random.default_rng(seed)
    n, d, B = int(rng.integers(1, 400)), int(rng.integers(1, 8)), int(rng.integers(1, 50))
    if integer:
        items = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
        q = rng.integers(-2, 3, size=(B, d)).astype(np.float32)
    else:
        items = (rng.normal(size=(n, d)) * rng.lognormal(0, 1, size=(n, 1))).astype(np.float32)
        q = rng.normal(size=(B, d)).astype(np.float32)
    return (
        q,
        items,
        *exclusions(rng, B, n),
        int(rng.integers(1, 60)),
        int(rng.integers(4, 64)),
        int(rng.integers(4, 32)),
    )


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("integer", [False, True], ids=["gaussian", "integer-ties"])
def test_pruned_equals_brute_force(metric, integer):
    """Random sizes (k above the catalogue too), blocks and chunks; huge exclusion sets; exact ties
    (integer vectors: many items share a score, brute force puts the smaller id first)."""
    for seed in range(12):
        q, items, ex, off, val, k, block, chunk = pruned_case(seed, integer)
        index = PrunedIndex(items, metric, block=block, user_chunk=chunk)
        got, scores = index.search_excluding(q, k, off, val, return_scores=True)
        ref = brute_topk(q, items, ex, k, metric)
        np.testing.assert_array_equal(got, ref, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(search_excluding(index, q, k, off, val), ref)
        # the returned scores are the ranking scores (l2: |u|^2 - |u - v|^2), -inf at PAD
        pair = index.pair_scores(q, np.nonzero(got != PAD)[0], got[got != PAD])
        np.testing.assert_allclose(scores[got != PAD], pair, rtol=1e-12, atol=1e-12)
        assert np.isneginf(scores[got == PAD]).all()


def test_pruned_k_above_catalogue_and_empty_batches():
    rng = np.random.default_rng(3)
    items, q = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    ex, off, val = exclusions(rng, 5, 7)
    index = PrunedIndex(items, "ip", block=2)
    got = index.search_excluding(q, 20, off, val)
    np.testing.assert_array_equal(got, brute_topk(q, items, ex, 20, "ip"))
    assert (got[0] == PAD).all() and (got[1] != PAD).sum() == 3
    assert index.search_excluding(q[:0], 5, np.zeros(1, np.int64), val[:0]).shape == (0, 5)


@pytest.mark.parametrize(
    "make",
    [
        lambda items, m: PrunedIndex(items, m, block=7, user_chunk=8),
        lambda items, m: BlockedFlatIndex(items, m, first_block=8, block=7),
    ],
    ids=["pruned", "blocked"],
)
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_indexes_near_ties_follow_float64(metric, make):
    """Items about one float32 ulp apart: float32 scores tie or misorder them; the lists still equal a
    float64 brute-force ranking (rescored, and boundary near-ties redone by a float64 scan)."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(40, 6))
    items = np.concatenate([base * (1 + j * 2.0**-23) for j in range(4)]).astype(np.float32)
    rng.shuffle(items)
    q = rng.normal(size=(30, 6)).astype(np.float32)
    ex, off, val = exclusions(rng, 30, len(items), big=0)
    index = make(items, metric)
    for k in (1, 3, 10, 37):
        np.testing.assert_array_equal(
            index.search_excluding(q, k, off, val), brute_topk(q, items, ex, k, metric)
        )


def test_pruned_faiss_style_search_and_pruning_happens():
    """`search` (no exclusion) agrees with FAISS flat, and on popularity-like norms the scan stops early."""
    rng = np.random.default_rng(5)
    pop = rng.zipf(1.5, 20000).clip(max=1000).astype(np.float64)
    items = (rng.normal(size=(20000, 6)) * np.log1p(pop)[:, None]).astype(np.float32)
    q = rng.normal(size=(64, 6)).astype(np.float32)
    for metric in ("ip", "l2"):
        index = PrunedIndex(items, metric, block=256)
        d, i = index.search(q, 20)
        fd, fi = build_index(items, metric).search(q, 20)
        np.testing.assert_array_equal(i, fi)
        np.testing.assert_allclose(d, fd, rtol=1e-4, atol=1e-3)
    index = PrunedIndex(items, "ip", block=256)
    index.search_excluding(q, 20, np.zeros(65, np.int64), np.zeros(0, np.int32))
    assert index.scanned < 0.2 * 64 * 20000  # scores computed: far fewer than users x items


def test_build_index_pruned_kind():
    items = np.random.default_rng(6).normal(size=(50, 3)).astype(np.float32)
    assert isinstance(build_index(items, "l2", "pruned"), PrunedIndex)
    with pytest.raises(ValueError):
        build_index(items, "cos", "pruned")


# ---------------------------------------------------------- BlockedFlatIndex (exact, FAISS blocks)
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("integer", [False, True], ids=["gaussian", "integer-ties"])
def test_blocked_equals_brute_force(metric, integer):
    """Random sizes (k above the catalogue too) and block sizes; rows excluding everything or all but
    3 items; exact ties (integer vectors: brute force puts the smaller id first)."""
    for seed in range(12):
        q, items, ex, off, val, k, first_block, block = pruned_case(seed, integer)
        index = BlockedFlatIndex(items, metric, first_block=first_block, block=block)
        ref = brute_topk(q, items, ex, k, metric)
        np.testing.assert_array_equal(index.search_excluding(q, k, off, val), ref, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(search_excluding(index, q, k, off, val), ref)


def test_blocked_heavy_users_and_protocol_masks():
    """Exclusion sets up to most of the catalogue (several power-of-two groups), two protocols from
    one search: each equals a brute-force ranking without its own exclusion set."""
    rng = np.random.default_rng(7)
    n, B, k = 500, 80, 30
    items = (rng.normal(size=(n, 6)) * rng.lognormal(0, 1, size=(n, 1))).astype(np.float32)
    q = rng.normal(size=(B, 6)).astype(np.float32)
    sizes = np.minimum(rng.zipf(1.3, B), n - 5)
    sizes[:3] = (n - 5, n // 2, 200)
    per_row = [rng.choice(n, size=s, replace=False) for s in sizes]
    codes = [rng.choice(np.array([1, 2, 4], np.uint8), size=s) for s in sizes]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    got = BlockedFlatIndex(items, "ip", first_block=32, block=48).search_sets(
        q, k, off, np.concatenate(per_row), np.concatenate(codes), [5, 3]
    )
    for p, mask in enumerate((5, 3)):
        ex = [e[(c & mask) != 0] for e, c in zip(per_row, codes)]
        np.testing.assert_array_equal(got[p], brute_topk(q, items, ex, k, "ip"), err_msg=f"mask {mask}")


def test_blocked_prunes_on_popularity_norms():
    """On popularity-like item norms most users stop after a small prefix of the norm-sorted blocks,
    and the lists equal FAISS flat's (no ties in continuous data) and brute force."""
    rng = np.random.default_rng(5)
    pop = rng.zipf(1.5, 20000).clip(max=1000).astype(np.float64)
    items = (rng.normal(size=(20000, 6)) * np.log1p(pop)[:, None]).astype(np.float32)
    q = rng.normal(size=(64, 6)).astype(np.float32)
    ex, off, val = exclusions(rng, 64, 20000, big=0)
    index = BlockedFlatIndex(items, "ip", first_block=512, block=512)
    got = index.search_excluding(q, 20, off, val)
    np.testing.assert_array_equal(got, brute_topk(q, items, ex, 20, "ip"))
    np.testing.assert_array_equal(got, search_excluding(build_index(items, "ip"), q, 20, off, val))
    assert index.scanned < 0.3 * 64 * 20000


def test_blocked_one_block_is_plain_search_and_bad_input():
    rng = np.random.default_rng(6)
    items, q = rng.normal(size=(300, 5)).astype(np.float32), rng.normal(size=(20, 5)).astype(np.float32)
    ex, off, val = exclusions(rng, 20, 300)
    whole = BlockedFlatIndex(items, "ip", first_block=10**6)
    assert len(whole.blocks) == 1 and len(BlockedFlatIndex(items, "ip", first_block=64, block=64).blocks) == 5
    assert len(BlockedFlatIndex(items, "l2", first_block=64, block=64).blocks) == 1  # no norm bound for l2
    np.testing.assert_array_equal(whole.search_excluding(q, 12, off, val), brute_topk(q, items, ex, 12, "ip"))
    assert isinstance(build_index(items, "ip", "blocked"), BlockedFlatIndex)
    assert whole.search_excluding(q[:0], 5, np.zeros(1, np.int64), val[:0]).shape == (0, 5)
    with pytest.raises(ValueError, match="excluded item ids"):
        whole.search_excluding(q[:1], 5, np.array([0, 1]), np.array([300], np.int32))
    with pytest.raises(ValueError):
        BlockedFlatIndex(items, "cos")


def test_faiss_blas_sets_and_restores_settings():
    cv = faiss.cvar
    before = cv.distance_compute_blas_threshold, cv.distance_compute_blas_query_bs
    with faiss_blas():
        assert cv.distance_compute_blas_threshold == BLAS_THRESHOLD
    assert (cv.distance_compute_blas_threshold, cv.distance_compute_blas_query_bs) == before


@pytest.mark.parametrize("chunk", [7, 1 << 18])
def test_rescore_orders_each_rows_candidates_by_their_scores(chunk):
    """Against a per-row loop: the k best candidates by score, ties in candidate order, PAD never ranked and
    filling short rows; blocks of rows (a chunk smaller than a row included) change nothing."""
    rng = np.random.default_rng(3)
    B, C, k, n_items = 23, 9, 5, 40
    s = np.round(rng.standard_normal((B, n_items)), 1).astype(np.float32)  # coarse: ties happen
    users = rng.permutation(B + 10)[:B]
    cand = rng.integers(0, n_items, (B, C)).astype(np.int32)
    cand[rng.random((B, C)) < 0.3] = PAD
    cand[0, 2:] = PAD  # fewer than k candidates
    row_of = {int(u): r for r, u in enumerate(users)}
    seen = []

    def block_fn(u, c):
        seen.append(len(u))
        assert (c >= 0).all()  # PAD handed over as a real item
        return torch.from_numpy(s[[row_of[int(x)] for x in u]][np.arange(len(u))[:, None], c])

    got = rescore(cand, users, k, block_fn, chunk=chunk)
    for r in range(B):
        kept = [(-s[r, c], pos, c) for pos, c in enumerate(cand[r]) if c != PAD]
        want = [c for _, _, c in sorted(kept)[:k]]
        assert got[r].tolist() == want + [PAD] * (k - len(want)), r
    assert sum(seen) == B and max(seen) <= max(1, chunk // C)
