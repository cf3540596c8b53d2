"""HetComp's losses against hand-worked numbers and a plain per-user loop written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hetcomp_dist.objectives import losses, tail_kernels

# one intra-op torch thread per test (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("_one_torch_thread")


# ------------------------------------------------------------------------------ plain references
def _ref_scores(a, c, u, clamp):
    return [torch.clamp(a[u] @ c[j], -clamp, clamp) for j in range(c.shape[0])]


def _ref_pl(s, order, tail_items):
    """PL(π; R) = -Σ_k [ŝ_{π_k} - log(Σ_{l>=k} e^{ŝ_{π_l}} + Σ_{j∈R} e^{ŝ_j})], one user, loops."""
    total = torch.zeros((), dtype=torch.float64)
    for k in range(len(order)):
        denom = sum(torch.exp(s[order[i]]) for i in range(k, len(order)))
        denom = denom + sum((torch.exp(s[j]) for j in tail_items), torch.zeros((), dtype=torch.float64))
        total = total - (s[order[k]] - torch.log(denom))
    return total


def _ref_user_lists(train, pos, targets, u):
    observed = set(train[u])
    p = [int(i) for i in pos[u] if i >= 0]
    t = [int(i) for i in targets[u] if i >= 0]
    return observed, p, t


def ref_l_o(a, c, train, pos, targets, clamp=40.0):
    out = []
    for u in range(a.shape[0]):
        s = _ref_scores(a, c, u, clamp)
        observed, p, t = _ref_user_lists(train, pos, targets, u)
        tail = [j for j in range(c.shape[0]) if j not in observed and j not in t]
        z = sum((torch.exp(s[j]) for j in tail), torch.zeros((), dtype=torch.float64))
        loss = torch.zeros((), dtype=torch.float64)
        for i in p + t:
            loss = loss - torch.log(torch.exp(s[i]) / (torch.exp(s[i]) + z))
        out.append(loss)
    return torch.stack(out)


def ref_l_f(a, c, train, pos, targets, clamp=40.0):
    K = targets.shape[1]
    out = []
    for u in range(a.shape[0]):
        s = _ref_scores(a, c, u, clamp)
        observed, p, _ = _ref_user_lists(train, pos, targets, u)
        ta = [int(i) for i in targets[u][: K // 2] if i >= 0]
        tb = [int(i) for i in targets[u][: max(1, K // 10)] if i >= 0]
        unobserved = [j for j in range(c.shape[0]) if j not in observed]
        rest_a = [j for j in unobserved if j not in ta]
        rest_b = [j for j in unobserved if j not in tb]
        out.append(_ref_pl(s, p, rest_a) + 0.5 * (_ref_pl(s, ta, rest_a) + _ref_pl(s, tb, rest_b)))
    return torch.stack(out)


def random_problem(seed, B=5, N=60, d=3, K=20, P=4, scale=0.7):
    """Random users with train lists, P+ (subset of train, variable length) and targets (unobserved)."""
    rng = np.random.default_rng(seed)
    a = torch.tensor(rng.normal(0, scale, (B, d)), dtype=torch.float64, requires_grad=True)
    c = torch.tensor(rng.normal(0, scale, (N, d)), dtype=torch.float64, requires_grad=True)
    train, pos, targets = [], np.full((B, P), -1), np.full((B, K), -1)
    for u in range(B):
        items = rng.permutation(N)
        n_tr = int(rng.integers(1, 12))
        train.append(items[:n_tr].tolist())
        n_p = int(rng.integers(1, min(P, n_tr) + 1))
        pos[u, :n_p] = rng.permutation(items[:n_tr])[:n_p]
        n_t = K if u % 2 == 0 else int(rng.integers(1, K))  # some users have fewer than K targets
        targets[u, :n_t] = items[n_tr : n_tr + n_t]
    rows = torch.tensor(np.concatenate([[u] * len(t) for u, t in enumerate(train)]), dtype=torch.int64)
    cols = torch.tensor(np.concatenate(train), dtype=torch.int64)
    return a, c, train, torch.tensor(pos), torch.tensor(targets), rows, cols


# ------------------------------------------------------------------------------- hand-worked
def test_l_o_hand_worked():
    # one user, d = 1, a = 1, c = [2, 1, 0, -1] -> logits [2, 1, 0, -1]; train {0}, P+ = [0], T = [1].
    # Tail N_u \ T = {2, 3}: Z = e^0 + e^-1 = 1.3678794.
    # L_O = log(1 + Z/e^2) + log(1 + Z/e^1) = log(1.1851224) + log(1.5032147) = 0.1698460 + 0.4076060
    a = torch.tensor([[1.0]], dtype=torch.float64)
    c = torch.tensor([[2.0], [1.0], [0.0], [-1.0]], dtype=torch.float64)
    got = losses.l_o(a, c, torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([0]), torch.tensor([0]))
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(0.1698460 + 0.4076060, abs=1e-6)


def test_pl_hand_worked():
    # PL([x, y]; R) with ŝ_x = 1, ŝ_y = 0, tail log-sum-exp log(2):
    # -(1 - log(e + 1 + 2)) - (0 - log(1 + 2)) = -1 + 1.7436684 + 1.0986123 = 1.8422807
    expect = 1.8422807
    got = losses.pl_loss(
        torch.tensor([[1.0, 0.0, 7.0]]), torch.tensor([[True, True, False]]), torch.tensor([math.log(2.0)])
    )
    assert float(got[0]) == pytest.approx(expect, abs=1e-6)
    # the pad (logit 7) must not change anything
    assert float(
        losses.pl_loss(
            torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([math.log(2.0)])
        )[0]
    ) == pytest.approx(expect, abs=1e-6)


def test_l_f_hand_worked():
    # K = 2 targets -> T^a = T[:1], T^b = T[:1]. logits [2, 1, 0, -1], train {0}, P+ [0], T = [1, 2].
    # N_u \ T^a = {2, 3}: tail = log(e^0 + e^-1).
    # L_F = PL([0]; {2,3}) + 0.5 (PL([1]; {2,3}) + PL([1]; {2,3}))
    z = math.exp(0) + math.exp(-1)
    pl0 = -(2 - math.log(math.exp(2) + z))
    pl1 = -(1 - math.log(math.exp(1) + z))
    a = torch.tensor([[1.0]], dtype=torch.float64)
    c = torch.tensor([[2.0], [1.0], [0.0], [-1.0]], dtype=torch.float64)
    got = losses.l_f(a, c, torch.tensor([[0]]), torch.tensor([[1, 2]]), torch.tensor([0]), torch.tensor([0]))
    assert float(got[0]) == pytest.approx(pl0 + pl1, rel=1e-9)


# ---------------------------------------------------------------------------- per-user loops
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["l_o", "l_f"])
def test_losses_match_per_user_loop(seed, kind):
    a, c, train, pos, targets, rows, cols = random_problem(seed)
    fn, ref = (losses.l_o, ref_l_o) if kind == "l_o" else (losses.l_f, ref_l_f)
    got = fn(a, c, pos, targets, rows, cols, 40.0, losses.tail_estimator("exact", 40.0, 7, 0, None))
    want = ref(a, c, train, pos, targets)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    w = torch.linspace(0.5, 1.5, len(got), dtype=torch.float64)
    ga, gc = torch.autograd.grad((got * w).sum(), [a, c])
    ra, rc = torch.autograd.grad((want * w).sum(), [a, c])
    torch.testing.assert_close(ga, ra, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gc, rc, rtol=1e-9, atol=1e-10)


def test_clamp_applies_to_tail_and_lists():
    # large vectors: many logits beyond ±40, so clamping (and its zero gradient) matters
    a, c, train, pos, targets, rows, cols = random_problem(3, d=4, scale=6.0)
    s = (a @ c.T).detach()
    assert (s.abs() > 40).float().mean() > 0.05
    for fn, ref in ((losses.l_o, ref_l_o), (losses.l_f, ref_l_f)):
        got = fn(a, c, pos, targets, rows, cols, 40.0)
        want = ref(a, c, train, pos, targets)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-8)
        ga, gc = torch.autograd.grad(got.sum(), [a, c])
        ra, rc = torch.autograd.grad(want.sum(), [a, c])
        torch.testing.assert_close(ga, ra, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(gc, rc, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------------------ the tail itself
@pytest.mark.parametrize(
    "kernel,chunk", [("torch", 0), ("torch", 5), ("torch", 64), ("torch", 10_000), ("fused", 0)]
)
def test_tail_logsumexp_equals_masked_dense_float32(kernel, chunk):
    g = torch.Generator().manual_seed(0)
    B, N, d = 37, 1_000, 6
    a = (torch.randn(B, d, generator=g) * 0.8).requires_grad_()
    c = (torch.randn(N, d, generator=g) * 0.8).requires_grad_()
    rows, cols = torch.randint(0, B, (3_000,), generator=g), torch.randint(0, N, (3_000,), generator=g)
    xr, xc = losses.exclusion(rows, cols, B, N)
    got = losses.tail_logsumexp(a, c, xr, xc, chunk=chunk, kernel=kernel)
    dense = (a @ c.T).clamp(-40, 40)
    excluded = torch.zeros(B, N, dtype=torch.bool)
    excluded[rows, cols] = True
    want = torch.logsumexp(dense.masked_fill(excluded, float("-inf")), 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    w = torch.rand(B, generator=g)
    ga, gc = torch.autograd.grad((got * w).sum(), [a, c])
    ra, rc = torch.autograd.grad((want * w).sum(), [a, c])
    torch.testing.assert_close(ga, ra, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gc, rc, rtol=1e-4, atol=1e-6)


def _dense_tail(a, c, rows, cols, clamp=40.0):
    """Plain reference: the whole clamped (B, N) logit matrix, excluded entries dropped, autograd."""
    excluded = torch.zeros(a.shape[0], c.shape[0], dtype=torch.bool)
    excluded[rows, cols] = True
    return torch.logsumexp((a @ c.T).clamp(-clamp, clamp).masked_fill(excluded, float("-inf")), 1)


def _tail_case(case, dtype, seed=0, B=45, N=700, d=6):
    """(a, c, rows, cols) with no, some or most logits beyond the clamp of 40."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, d, generator=g, dtype=dtype)
    c = torch.randn(N, d, generator=g, dtype=dtype)
    if case == "none":  # the norm bound stays under the clamp: no block is clamped
        a, c = a * 0.8, c * 0.8
    elif case == "bound_only":  # every block's bound passes the clamp, yet no logit does
        a[:, d // 2 :], c[:, : d // 2] = 0.0, 0.0
        a, c = a * 10, c * 10
    elif case == "few":  # a handful of users and items with large norms
        a[:3], c[:25] = a[:3] * 9, c[:25] * 9
    elif case == "mixed":  # items in the first half small (those blocks skip the clamp), the rest large
        c[: N // 2] *= 0.05
        a, c = a * 3, c * 3
    else:  # "many": huge norms, most logits clipped on both sides
        a, c = a * 12, c * 12
    rows, cols = torch.randint(0, B, (4 * N,), generator=g), torch.randint(0, N, (4 * N,), generator=g)
    return a.requires_grad_(), c.requires_grad_(), rows, cols


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["none", "bound_only", "few", "mixed", "many"])
def test_tail_with_and_without_clipped_entries(case, dtype):
    a, c, rows, cols = _tail_case(case, dtype)
    s = (a @ c.T).detach()
    share = float((s.abs() > 40).double().mean())
    bound = float(a.detach().norm(dim=1).max() * c.detach().norm(dim=1).max())
    clips = losses._clipping_blocks((a.detach() * losses.LOG2E).T, c.detach(), 40 * losses.LOG2E, 64)
    expect = {"none": share == 0 and bound < 40, "bound_only": share == 0 and all(clips)}
    expect.update(few=0 < share < 0.02, mixed=0.01 < share < 0.5 and any(clips) and not all(clips))
    expect.update(many=share > 0.8 and bool((s > 40).any()))
    assert expect[case], (share, bound, clips)
    xr, xc = losses.exclusion(rows, cols, a.shape[0], c.shape[0])
    want = _dense_tail(a, c, rows, cols)
    w = torch.linspace(0.5, 1.5, a.shape[0], dtype=dtype)
    ra, rc = torch.autograd.grad((want * w).sum(), [a, c])
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    gtol = {"rtol": 1e-10, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    kernels = [("torch", 0), ("torch", 64), ("torch", 10_000)] + [("fused", 0)] * (dtype == torch.float32)
    for kernel, chunk in kernels:
        got = losses.tail_logsumexp(a, c, xr, xc, chunk=chunk, kernel=kernel)
        torch.testing.assert_close(got, want, **tol)
        ga, gc = torch.autograd.grad((got * w).sum(), [a, c])
        torch.testing.assert_close(ga, ra, **gtol)
        torch.testing.assert_close(gc, rc, **gtol)


@pytest.mark.parametrize("case", ["few", "mixed", "many"])
def test_tail_gradcheck_with_clipped_entries(case):
    a, c, rows, cols = _tail_case(case, torch.float64, seed=3, B=6, N=40, d=3)
    # finite differences need every logit away from the clamp's kinks
    assert ((a @ c.T).detach().abs() - 40).abs().min() > 1e-3
    assert float(((a @ c.T).detach().abs() > 40).double().mean()) > 0
    xr, xc = losses.exclusion(rows, cols, 6, 40)
    assert torch.autograd.gradcheck(lambda a, c: losses.tail_logsumexp(a, c, xr, xc, chunk=7), (a, c))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_passes_match_a_mask_at_the_clamp_edges(dtype):
    """The backward's threshold passes give exactly what a clamp mask gives, at and next to ±lim."""
    lim = 40.0 * losses.LOG2E
    edge, inf = torch.tensor(lim, dtype=dtype), torch.tensor(float("inf"), dtype=dtype)
    near = [edge, torch.nextafter(edge, inf), torch.nextafter(edge, -inf), torch.tensor(0.0, dtype=dtype)]
    x = torch.stack(near + [-v for v in near] + [torch.tensor(1e30, dtype=dtype), -inf, inf])[:, None]
    at = torch.tensor([[1.0, 0.5]], dtype=dtype)
    got = losses._clipped_to_minus_inf(x, -at, losses._below(-lim, dtype)).exp2()
    blk = x @ at
    want = blk.clamp(-lim, lim).exp2().masked_fill((blk > lim) | (blk < -lim), 0.0)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kernel", ["torch", "fused"])
def test_tail_stays_exact_when_excluded_items_hold_the_mass(kernel):
    # the targets dominate (logit 40 vs ~0): a subtract-from-total tail would lose everything
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    c = torch.cat([torch.tensor([[40.0, 0.0]] * 5), torch.zeros(995, 2)], 0).requires_grad_()
    xr, xc = losses.exclusion(torch.zeros(5, dtype=torch.int64), torch.arange(5), 1, 1000)
    got = losses.tail_logsumexp(a, c, xr, xc, kernel=kernel)
    assert float(got[0].detach()) == pytest.approx(math.log(995.0), rel=1e-6)
    ga, gc = torch.autograd.grad(got.sum(), [a, c])  # the tail's items all score 0: c_j / 995 each
    assert torch.equal(gc[:5], torch.zeros(5, 2)) and ga.abs().max() == 0
    torch.testing.assert_close(gc[5:], a.detach().expand(995, 2) / 995.0)


@pytest.mark.parametrize("d", [1, 6, 7, 8])
def test_fused_tail_split_over_threads_equals_one_pass(d):
    """The fused kernels' item ranges (one per torch thread) add up to the single pass, and to the torch
    kernel, values and gradients, at every width d the students use (ML's sides are d + 2 wide; d = 1 and
    7 take the odd-width path of the backward's paired sums)."""
    g = torch.Generator().manual_seed(d)
    B, N = 300, 5_000
    a = (torch.randn(B, d, generator=g) * 2.5).requires_grad_()
    c = (torch.randn(N, d, generator=g) * 2.5).requires_grad_()
    rows, cols = torch.randint(0, B, (4 * N,), generator=g), torch.randint(0, N, (4 * N,), generator=g)
    xr, xc = losses.exclusion(rows, cols, B, N)
    w = torch.rand(B, generator=g)
    want = losses.tail_logsumexp(a, c, xr, xc, kernel="torch")
    ra, rc = torch.autograd.grad((want * w).sum(), [a, c])
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            got = losses.tail_logsumexp(a, c, xr, xc, kernel="fused")
            ga, gc = torch.autograd.grad((got * w).sum(), [a, c])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ga, ra, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gc, rc, rtol=1e-4, atol=1e-7)
    finally:
        torch.set_num_threads(threads)
    assert tail_kernels._ranges(N, 3) == [(0, 1666), (1666, 3333), (3333, 5000)]


def test_exclusion_pairs_are_the_distinct_pairs_sorted_by_item_then_row():
    g = torch.Generator().manual_seed(5)
    B, N = 40, 300
    rows = torch.randint(0, B, (2_000,), generator=g)
    cols = torch.randint(-1, N, (2_000,), generator=g)  # -1: list padding, dropped
    xr, xc = losses.exclusion(rows, cols, B, N)
    want = sorted({(c, r) for r, c in zip(rows.tolist(), cols.tolist()) if c >= 0})
    assert list(zip(xc.tolist(), xr.tolist())) == want
    assert xr.dtype == xc.dtype == torch.int64
    empty = losses.exclusion(torch.zeros(3, dtype=torch.int64), torch.full((3,), -1), 2, 5)
    assert [len(x) for x in empty] == [0, 0]


def test_fused_tail_refuses_what_it_cannot_compute():
    a, c = torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    xr, xc = losses.exclusion(torch.tensor([0]), torch.tensor([1]), 2, 4)
    with pytest.raises(ValueError, match="fused"):
        losses.tail_logsumexp(a, c, xr, xc, kernel="fused")
    with pytest.raises(ValueError, match="fused"):
        losses.tail_logsumexp(a.float(), c.float(), xr, xc, clamp=100.0, kernel="fused")
    torch.testing.assert_close(  # auto falls back to the torch kernel for both
        losses.tail_logsumexp(a.float(), c.float(), xr, xc, clamp=100.0),
        losses.tail_logsumexp(a.float(), c.float(), xr, xc, clamp=100.0, kernel="torch"),
    )


def test_empty_tail_is_minus_inf_without_nan_gradients():
    a = torch.randn(2, 3, requires_grad=True)
    c = torch.randn(4, 3, requires_grad=True)
    rows = torch.tensor([0, 0, 0, 0, 1])
    cols = torch.tensor([0, 1, 2, 3, 2])
    xr, xc = losses.exclusion(rows, cols, 2, 4)
    t = losses.tail_logsumexp(a, c, xr, xc)
    assert torch.isneginf(t[0]) and torch.isfinite(t[1])
    items = torch.tensor([[0, 1], [2, -1]])
    loss = (
        losses.per_item_tail_nll(losses.list_logits(a, c, items), items >= 0, t).sum()
        + losses.pl_loss(losses.list_logits(a, c, items), items >= 0, t).sum()
    )
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(c.grad).all()


def test_sampled_tail_converges_to_exact():
    g = torch.Generator().manual_seed(1)
    B, N, d = 20, 2_000, 6
    a, c = torch.randn(B, d, generator=g), torch.randn(N, d, generator=g) * 0.7
    rows, cols = torch.randint(0, B, (600,), generator=g), torch.randint(0, N, (600,), generator=g)
    xr, xc = losses.exclusion(rows, cols, B, N)
    exact = losses.tail_logsumexp(a, c, xr, xc)
    full = losses.sampled_tail_logsumexp(a, c, xr, xc, N, g)  # the sample covers N_u: exact
    torch.testing.assert_close(full, exact, rtol=1e-5, atol=1e-5)
    errors = []
    for n in (50, 200, 1_000):
        draws = torch.stack([losses.sampled_tail_logsumexp(a, c, xr, xc, n, g) for _ in range(30)])
        errors.append(float((draws - exact).abs().mean()))
        bias = float((draws - exact).mean())
        assert bias < 0.02  # Jensen: the log of an unbiased sum estimate is biased low, never high
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 3


def test_sampled_tail_gradient_flows():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 6, requires_grad=True)
    c = torch.randn(300, 6, requires_grad=True)
    xr, xc = losses.exclusion(torch.tensor([0, 1]), torch.tensor([3, 4]), 4, 300)
    losses.sampled_tail_logsumexp(a, c, xr, xc, 64, g).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert (c.grad.abs().sum(1) > 0).sum() <= 64  # only sampled items receive a gradient


@pytest.mark.parametrize("scale", [0.7, 12.0])  # 12: many logits past the clamp
def test_fused_sampled_tail_equals_the_blocked_one(scale):
    """The fused sampled tail (the exact kernel over the sampled items, exclusions moved into the sample)
    gives the (B, |S|) block's estimate and gradients on the same sample, with a row whose sampled items
    are all excluded (-inf, no gradient) and a row with no exclusions."""
    B, N, d, n = 7, 150, 6, 40  # 4 n >= N: the sample is randperm's first n
    g = torch.Generator().manual_seed(3)
    a0, c0 = torch.randn(B, d, generator=g) * scale**0.5, torch.randn(N, d, generator=g) * scale**0.5
    sample = torch.randperm(N, generator=torch.Generator().manual_seed(9))[:n]
    rows = torch.cat([torch.randint(0, B - 1, (120,), generator=g), torch.zeros(n, dtype=torch.long)])
    cols = torch.cat([torch.randint(0, N, (120,), generator=g), sample])  # row 0 excludes the whole sample
    keep = rows != B - 2  # row B - 2: nothing excluded
    xr, xc = losses.exclusion(rows[keep], cols[keep], B, N)
    out = {}
    for kernel in ("torch", "fused"):
        a, c = a0.clone().requires_grad_(), c0.clone().requires_grad_()
        t = losses.sampled_tail_logsumexp(a, c, xr, xc, n, torch.Generator().manual_seed(9), kernel=kernel)
        torch.where(torch.isfinite(t), t, torch.zeros_like(t)).sum().backward()
        out[kernel] = (t.detach(), a.grad, c.grad)
    assert torch.isneginf(out["fused"][0][0]) and torch.isfinite(out["fused"][0][1:]).all()
    assert (out["fused"][1][0] == 0).all()
    for got, ref in zip(out["fused"], out["torch"]):
        torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)
    assert (out["fused"][2].abs().sum(1) > 0).sum() <= n  # only sampled items receive a gradient


def test_sampled_pairs_against_sets():
    """tail_kernels.sampled_pairs: per row, the number of distinct excluded items over the catalogue, and
    the distinct excluded pairs inside the sample at their positions, sorted by position then row --
    checked against Python sets, on raw pairs with duplicates, -1 pads, a row without pairs and a row
    whose every pair is a duplicate."""
    from hetcomp_dist.objectives import tail_kernels

    rng = np.random.default_rng(4)
    B, N, m = 9, 300, 40
    rows = rng.integers(0, B - 1, 2_000)  # row B - 1: no pairs
    cols = rng.integers(-1, N, 2_000)  # -1: pads
    rows = np.concatenate([rows, [3] * 50]).astype(np.int64)
    cols = np.concatenate([cols, [7] * 50]).astype(np.int64)  # one item, 50 times
    sample = rng.choice(N, m, replace=False)
    where = np.full(N, -1, np.int64)
    where[sample] = np.arange(m)
    n_ex, hr, hp = tail_kernels.sampled_pairs(rows, cols, B, where, m)
    sets = [set(cols[(rows == b) & (cols >= 0)].tolist()) for b in range(B)]
    assert n_ex.tolist() == [len(s) for s in sets] and n_ex[B - 1] == 0
    want = sorted((int(where[j]), b) for b in range(B) for j in sets[b] if where[j] >= 0)
    assert list(zip(hp.tolist(), hr.tolist())) == want


@pytest.mark.parametrize("kernel", ["fused", "torch"])
def test_sampled_tail_takes_raw_pairs(kernel):
    """The sampled tail gives the same bits (value and gradients) from raw pairs (`list_pairs`: duplicates
    and pads) as from the deduplicated, sorted ones (`exclude_lists`), on the same sample; and the fused
    path's estimate is the one written out by hand: log(|R_b| / m_b) + log Σ_{j ∈ S \\ X_b} e^{ŝ_bj}."""
    B, N, d, n = 12, 500, 6, 64
    g = torch.Generator().manual_seed(5)
    a0, c0 = torch.randn(B, d, generator=g), torch.randn(N, d, generator=g)
    rows = torch.randint(0, B, (400,), generator=g)
    cols = torch.randint(0, N, (400,), generator=g)
    lists = torch.randint(-1, N, (B, 20), generator=g)
    lists[:, 10:] = lists[:, :10]  # every list item twice
    out = []
    for pairs in (losses.list_pairs(rows, cols, lists), losses.exclude_lists(rows, cols, lists, N)):
        a, c = a0.clone().requires_grad_(), c0.clone().requires_grad_()
        t = losses.sampled_tail_logsumexp(a, c, *pairs, n, torch.Generator().manual_seed(6), kernel=kernel)
        t.sum().backward()
        out.append((t.detach(), a.grad, c.grad))
    for got, ref in zip(*out):
        assert torch.equal(got, ref)
    # by hand, the sample drawn as the estimator draws it (4 n < N: unique of n draws)
    sample = torch.unique(torch.randint(0, N, (n,), generator=torch.Generator().manual_seed(6))).tolist()
    for b in range(B):
        excluded = set(cols[rows == b].tolist()) | {j for j in lists[b].tolist() if j >= 0}
        kept = [j for j in sample if j not in excluded]
        s = (a0[b].double() @ c0[kept].double().T).clamp(-40, 40)
        want = math.log((N - len(excluded)) / len(kept)) + float(torch.logsumexp(s, 0))
        assert float(out[0][0][b]) == pytest.approx(want, abs=1e-4)
