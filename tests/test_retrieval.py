"""Retrieval core and metrics against brute force (numpy argsort, plain loops, hand-worked numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hetcomp_dist.evaluation.metrics import MetricSums, recall_ndcg
from hetcomp_dist.evaluation.retrieval import (PAD, build_index, excluded_mask, first_k_kept, search_excluding,
                                               topk_from_scores, topk_scorer)


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
    s = q.astype(np.float64) @ items.T.astype(np.float64) if metric == "ip" else \
        -((q[:, None, :].astype(np.float64) - items[None].astype(np.float64)) ** 2).sum(-1)
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
    got = topk_scorer(lambda u: torch.from_numpy(q[u]) @ torch.from_numpy(items).T, users, 50, off, val, batch_size=7)
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


def test_mask_and_first_k_kept_hand_example():
    cand = np.array([[7, 3, 5, 1], [2, PAD, 4, 6]], np.int32)
    mask = excluded_mask(cand, np.array([0, 2, 3]), np.array([3, 1, 6], np.int32), 8)
    assert mask.tolist() == [[False, True, False, True], [False, False, False, True]]
    assert first_k_kept(cand, mask, 2).tolist() == [[7, 5], [2, 4]]
    assert first_k_kept(cand, mask, 3).tolist() == [[7, 5, PAD], [2, 4, PAD]]


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
            assert got[f"N@{k}"][b] == pytest.approx(sum(h / math.log2(t + 2) for t, h in enumerate(hits)) / idcg,
                                                     abs=1e-12)
