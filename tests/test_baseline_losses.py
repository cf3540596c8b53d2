"""The baselines' losses (METHOD.md §4) against hand-worked examples and plain per-user loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hetcomp_dist.objectives import baseline_losses, losses

LOG = math.log


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# ------------------------------------------------------------------------------------ plain references
def ref_pl(scores, valid, tail_sum, weights=None):
    """Per-user loop: -sum_k w_k [s_k - log(sum_{l>=k} e^{s_l} + tail_sum)] over valid k, l."""
    out = []
    for b in range(len(scores)):
        idx = [k for k in range(len(scores[b])) if valid[b][k]]
        total = 0.0
        for pos, k in enumerate(idx):
            den = sum(math.exp(scores[b][j]) for j in idx[pos:]) + tail_sum[b]
            w = 1.0 if weights is None else weights[b][k]
            total -= w * (scores[b][k] - math.log(den))
        out.append(total)
    return out


# ------------------------------------------------------------------------------------ building blocks
def test_masked_logsumexp_and_items_mask():
    logits = t([[LOG(1), LOG(2), LOG(3), LOG(4)], [0.0, 0.0, 0.0, 0.0]])
    mask = baseline_losses.items_mask(4, torch.tensor([[0, 2, -1], [-1, -1, -1]]), torch.tensor([[3], [1]]))
    assert mask.tolist() == [[True, False, True, True], [False, True, False, False]]
    lse = losses.masked_logsumexp(logits, mask)
    assert lse[0].item() == pytest.approx(LOG(1 + 3 + 4))
    assert lse[1].item() == pytest.approx(0.0)
    # an empty set contributes e^lse == 0
    empty = losses.masked_logsumexp(logits, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.exp(empty).max().item() == 0.0


def test_pl_hand_worked():
    # scores e^s = 3, 2, 1; tail e-mass 4: -[log 3/10 + log 2/7 + log 1/5]
    s = t([[LOG(3), LOG(2), 0.0]])
    loss = losses.pl_loss(s, torch.ones(1, 3, dtype=torch.bool), t([LOG(4)]))
    assert loss.item() == pytest.approx(-(LOG(3 / 10) + LOG(2 / 7) + LOG(1 / 5)))
    # a pad in the middle is skipped: list (3, 1), tail 4 -> -[log 3/8 + log 1/5]
    loss = losses.pl_loss(s, t([[True, False, True]], torch.bool), t([LOG(4)]))
    assert loss.item() == pytest.approx(-(LOG(3 / 8) + LOG(1 / 5)))
    # weights scale each term
    loss = losses.pl_loss(s, torch.ones(1, 3, dtype=torch.bool), t([LOG(4)]), weights=t([[2.0, 0.0, 0.5]]))
    assert loss.item() == pytest.approx(-(2 * LOG(3 / 10) + 0.5 * LOG(1 / 5)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pl_matches_loop(seed):
    rng = np.random.default_rng(seed)
    B, Lk = 7, 6
    scores = rng.normal(0, 2, (B, Lk))
    valid = rng.random((B, Lk)) < 0.7
    valid[0] = False  # a user with an empty list
    tail = rng.uniform(0, 5, B)
    tail[1] = 0.0  # an empty tail
    weights = rng.uniform(0, 1, (B, Lk))
    tail_lse = torch.from_numpy(np.where(tail > 0, np.log(np.maximum(tail, 1e-300)), losses.PAD_LOGIT))
    for w in (None, weights):
        got = losses.pl_loss(
            torch.from_numpy(scores),
            torch.from_numpy(valid),
            tail_lse,
            None if w is None else torch.from_numpy(w),
        )
        np.testing.assert_allclose(got.numpy(), ref_pl(scores, valid, tail, w), rtol=1e-10, atol=1e-10)


def test_pl_finite_gradients_with_empty_sets():
    s = torch.zeros(2, 3, dtype=torch.float32, requires_grad=True)
    valid = t([[True, True, False], [False, False, False]], torch.bool)
    tail = losses.masked_logsumexp(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.bool))
    losses.pl_loss(s, valid, tail).sum().backward()
    assert torch.isfinite(s.grad).all()
    # with an empty tail the last item of a list has probability 1: no gradient on it
    assert s.grad[0, 1].item() == pytest.approx(0.5) and s.grad[1].abs().max() == 0


def test_rrd_tail_is_unobserved_minus_top():
    # catalogue of 6, observed {5}, teacher list (2, 0); tail = {1, 3, 4}
    logits = t([[LOG(2), LOG(1), LOG(4), LOG(3), LOG(5), LOG(100)]])
    top = torch.tensor([[2, 0]])
    tail = losses.masked_logsumexp(logits, ~baseline_losses.items_mask(6, top, torch.tensor([[5]])))
    s, valid = baseline_losses.gather_list(logits, top)
    loss = losses.pl_loss(s, valid, tail)
    assert loss.item() == pytest.approx(-(LOG(4 / (4 + 2 + 9)) + LOG(2 / (2 + 9))))


# ------------------------------------------------------------------------------------ RD
def test_rd_hand_worked():
    w = baseline_losses.rd_static_weights(2, lam=1.0)
    np.testing.assert_allclose(
        w.numpy(), [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))], rtol=1e-6
    )
    # scores 0 and log 3: -log sigma(0) = log 2, -log sigma(log 3) = log(4/3)
    s = t([[0.0, LOG(3)]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    got = baseline_losses.rd_loss(s, valid, w.double())
    assert got.item() == pytest.approx(w[0].item() * LOG(2) + w[1].item() * LOG(4 / 3), rel=1e-6)
    # dynamic weights (0.2, 0.6) renormalised together with the static ones
    dyn = t([[0.2, 0.6]])
    a, b = w[0].item() * 0.2, w[1].item() * 0.6
    got = baseline_losses.rd_loss(s, valid, w.double(), dyn)
    assert got.item() == pytest.approx((a * LOG(2) + b * LOG(4 / 3)) / (a + b), rel=1e-6)
    # all dynamic weights zero -> the user contributes nothing (no NaN)
    assert baseline_losses.rd_loss(s, valid, w.double(), torch.zeros(1, 2, dtype=torch.float64)).item() == 0.0


def test_rd_rank_estimate_and_dynamic_weight():
    # reference scores (0, 2, -2, 3): 2 of 4 above 1.0, 3 of 4 above -1.0; catalogue of 11
    est = baseline_losses.estimate_ranks(t([[1.0, -1.0]]), t([[0.0, 2.0, -2.0, 3.0]]), n_items=11)
    assert est.tolist() == [[5.0, 7.0]]  # floor(10 * 0.5), floor(10 * 0.75)
    dyn = baseline_losses.rd_dynamic_weights(est, mu=0.1)
    np.testing.assert_allclose(dyn.numpy(), [[math.tanh(0.5), math.tanh(0.6)]])
    # a student rank above the teacher's gives weight 0
    assert baseline_losses.rd_dynamic_weights(t([[0.0, 0.0]]), mu=0.1).tolist() == [[0.0, 0.0]]


# ------------------------------------------------------------------------------------ MTD
def test_mtd_hand_worked():
    user = t([[1.0, 0.0]], torch.float64).requires_grad_(True)
    teach = t([[LOG(3), 5.0], [0.0, -7.0]]).requires_grad_(True)  # <e_u, t_x> = (log 3, 0) -> w = (3/4, 1/4)
    pl = t([[2.0, 6.0]])
    loss, w = baseline_losses.mtd_loss(pl, user, teach, entropy_coef=0.01)
    np.testing.assert_allclose(w.detach().numpy(), [[0.75, 0.25]])
    H = -(0.75 * LOG(0.75) + 0.25 * LOG(0.25))
    assert loss.item() == pytest.approx(0.75 * 2 + 0.25 * 6 - 0.01 * H)
    loss.sum().backward()
    assert user.grad is None  # sg(e_u): the student's user vector is not trained by the weights
    # d/dz_0 of sum_x w_x PL_x - c H with w = softmax(z): w_0 (PL_0 - wPL) + c w_0 (log w_0 + H)
    g0 = 0.75 * (2 - 3) + 0.01 * 0.75 * (LOG(0.75) + H)
    assert teach.grad[0, 0].item() == pytest.approx(g0)  # e_u = (1, 0): only the first coordinate moves
    assert teach.grad[0, 1].item() == 0.0


# ------------------------------------------------------------------------------------ CL-DRD
def test_cldrd_labels():
    np.testing.assert_allclose(
        baseline_losses.cldrd_labels((2, 1, 1)).numpy(), [1.0, 0.5, 1 / 3, 0.0], rtol=1e-6
    )
    assert baseline_losses.cldrd_labels((5, 12, 13)).shape == (30,)


def test_lambda_mrr_hand_worked():
    # scores (0, 1, -1), labels (1, 1/2, 0): student ranks 2, 1, 3
    s = t([[0.0, 1.0, -1.0]])
    y = t([[1.0, 0.5, 0.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert baseline_losses.list_ranks(s, valid).tolist() == [[2, 1, 3]]
    want = (
        abs(1 / 2 - 1) * LOG(1 + math.e)  # pair (0, 1): s_0 - s_1 = -1
        + abs(1 / 2 - 1 / 3) * LOG(1 + math.exp(-1))  # pair (0, 2): +1
        + abs(1 - 1 / 3) * LOG(1 + math.exp(-2))
    )  # pair (1, 2): +2
    assert baseline_losses.lambda_mrr_loss(s, y, valid).item() == pytest.approx(want)


@pytest.mark.parametrize("seed", [0, 1])
def test_lambda_mrr_matches_loop(seed):
    rng = np.random.default_rng(seed)
    B, n = 5, 8
    s = rng.normal(0, 1, (B, n))
    y = np.tile(baseline_losses.cldrd_labels((3, 3, 2)).double().numpy(), (B, 1))
    valid = rng.random((B, n)) < 0.8
    want = []
    for b in range(B):
        idx = [i for i in range(n) if valid[b, i]]
        order = sorted(idx, key=lambda i: (-s[b, i], i))
        rank = {i: p + 1 for p, i in enumerate(order)}
        want.append(
            sum(
                abs(1 / rank[i] - 1 / rank[j]) * math.log1p(math.exp(-(s[b, i] - s[b, j])))
                for i in idx
                for j in idx
                if y[b, i] > y[b, j]
            )
        )
    got = baseline_losses.lambda_mrr_loss(torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(valid))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


# ------------------------------------------------------------------------------------ DCD
def test_unobserved_ranks_hand_worked():
    logits = t([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    observed = t([[False, True, False, False, False], [False, False, False, False, True]], torch.bool)
    items = torch.tensor([[2, 0, 4], [4, 3, -1]])
    # row 0: item 2 has only item 0 above it (item 1 is observed); item 4 has 0, 2, 3 above
    # row 1: the observed item 4 itself is ranked against the unobserved ones: nothing above it
    assert baseline_losses.unobserved_ranks(logits, observed, items).tolist() == [[1, 0, 3], [0, 0, -1]]


@pytest.mark.parametrize("seed", [0, 1])
def test_unobserved_ranks_matches_loop(seed):
    rng = np.random.default_rng(seed)
    B, N, Lk = 6, 30, 8
    logits = rng.normal(0, 1, (B, N))
    observed = rng.random((B, N)) < 0.2
    items = np.stack([rng.choice(N, Lk, replace=False) for _ in range(B)])
    want = [
        [sum(1 for j in range(N) if not observed[b, j] and logits[b, j] > logits[b, i]) for i in items[b]]
        for b in range(B)
    ]
    got = baseline_losses.unobserved_ranks(
        torch.from_numpy(logits), torch.from_numpy(observed), torch.from_numpy(items)
    )
    assert got.tolist() == want
    for cap in (1, 5, 12):  # partial selection: exact below the cap, the cap above it
        got = baseline_losses.unobserved_ranks(
            torch.from_numpy(logits), torch.from_numpy(observed), torch.from_numpy(items), cap
        )
        assert got.tolist() == [[min(r, cap) for r in row] for row in want]


def test_dcd_hand_worked():
    # teacher order: items a, b, c, d with e^s = 2, 1, 4, 7; gaps +20, -10, +5, 0 (d: neither set)
    s = t([[LOG(2), 0.0, LOG(4), LOG(7)]])
    delta = t([[20.0, -10.0, 5.0, 0.0]])
    wa, wb, wc = math.tanh(2.0), math.tanh(1.0), math.tanh(0.5)
    want = -(wa * (LOG(2) - LOG(2 + 4 + wb * 1)) + wc * (LOG(4) - LOG(4 + wb * 1)))
    got = baseline_losses.dcd_loss(s, torch.ones(1, 4, dtype=torch.bool), delta, eps=10.0)
    assert got.item() == pytest.approx(want)
    # nothing under-estimated -> 0; nothing over-estimated -> a weighted PL with an empty tail
    assert baseline_losses.dcd_loss(s, torch.ones(1, 4, dtype=torch.bool), -delta.abs(), 10.0).item() == 0.0
    got = baseline_losses.dcd_loss(s, torch.ones(1, 4, dtype=torch.bool), delta.abs(), 10.0)
    # Δ = 0 (item d) is in neither set
    want = -(wa * (LOG(2) - LOG(2 + 1 + 4)) + wb * (0.0 - LOG(1 + 4)) + wc * (LOG(4) - LOG(4)))
    assert got.item() == pytest.approx(want)


# ------------------------------------------------------------------------------------ list helpers
def test_union_and_membership_match_sets():
    rng = np.random.default_rng(0)
    lists = torch.from_numpy(rng.integers(-1, 12, size=(9, 3, 5)))  # repeats within a list too
    lists[0, 1] = -1  # a teacher with no list for this user
    union, patterns = baseline_losses.union_patterns(lists)
    assert union.shape == patterns.shape == (9, 15)
    for b in range(9):
        want = sorted({int(i) for i in lists[b].ravel() if i >= 0})
        got = union[b][union[b] >= 0].tolist()
        assert got == want
        for j, item in enumerate(union[b].tolist()):
            holders = {x for x in range(3) if item >= 0 and item in lists[b, x].tolist()}
            assert int(patterns[b, j]) == sum(1 << x for x in holders)


@pytest.mark.parametrize("m", [1, 3, 6])  # one teacher up to all six
def test_rest_logsumexp_is_each_lists_complement_in_the_union(m):
    rng = np.random.default_rng(m)
    lists = torch.from_numpy(rng.integers(-1, 20, size=(7, m, 6)))
    lists[1] = lists[1, :1]  # every list the same: empty complements
    union, patterns = baseline_losses.union_patterns(lists)
    scores = torch.from_numpy(rng.normal(0, 5, size=union.shape))
    scores[2] *= 25  # a spread of hundreds within one row: terms far below the row's top still count
    got = baseline_losses.rest_logsumexp(scores, patterns, m)
    for b in range(7):
        for x in range(m):
            mine = set(lists[b, x].tolist())
            terms = [float(scores[b, j]) for j, i in enumerate(union[b].tolist()) if i >= 0 and i not in mine]
            if terms:
                assert float(got[b, x]) == pytest.approx(
                    math.log(math.fsum(math.exp(s) for s in terms)), abs=1e-9
                )
            else:
                assert float(got[b, x]) <= losses.PAD_LOGIT / 2
    g = scores.clone().requires_grad_(True)  # finite gradients, empty complements included
    baseline_losses.rest_logsumexp(g, patterns, m).clamp(min=-100).sum().backward()
    assert torch.isfinite(g.grad).all()
