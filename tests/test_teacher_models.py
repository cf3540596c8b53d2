"""The teachers stage's trajectory ranker over every teacher model (and the CDAE variant of the AE).

For each model: the ranker's top-K never holds a train item and equals a brute-force per-user sort;
the observed items come back ordered by score. Then the checks of one model: ALS's epochs are the
`implicit` solver's iterations, its loss the objective it solves; item-kNN's scores are its kept cosines
summed. What every model (teacher or student) promises -- loss, scores, embeddings, state dict -- is
checked once for all in tests/test_model_contract.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_model_contract import N_ITEMS, N_USERS, TEACHER_CASES, tiny_train

from hetcomp_dist.config import EvalConfig
from hetcomp_dist.models.rowwise import RowwiseAdam
from hetcomp_dist.teachers.trajectory import Ranker, calibrate_breadth, recall_vs_exact


@pytest.fixture(params=TEACHER_CASES, ids=[c.id for c in TEACHER_CASES])
def case(request):
    c = request.param
    train = tiny_train()
    return c.name, c.variant, train, c.build(train)


def test_topk_excludes_train_and_matches_brute_force(case):
    name, _, train, model = case
    # an epoch so scores are not all near-equal (a few optimiser steps, or a model's own solver step)
    params = model.optimizer_parameters()
    opt = RowwiseAdam(params, lr=1e-2) if params else None
    model.fit_epoch(train, np.random.default_rng(0), 64, opt)
    ranker = Ranker(model, train)
    users = np.arange(N_USERS)
    k = 30
    top = ranker.topk(users, k, train.offsets, train.items)
    assert top.shape == (N_USERS, k)
    with torch.no_grad():
        scores = model.eval().scores(torch.from_numpy(users), train).numpy()
    for u in users:  # plain per-user reference
        seen = set(train.row(u).tolist())
        row = top[u]
        assert not seen & set(row.tolist()), f"{name}: train item in user {u}'s top-K"
        assert len(set(row.tolist())) == k and (row >= 0).all()
        rest = np.array([i for i in range(N_ITEMS) if i not in seen and i not in set(row.tolist())])
        got = scores[u, row]
        assert np.all(np.diff(got) <= 1e-4), f"{name}: top-K not best first"
        if len(rest):
            assert got.min() >= scores[u, rest].max() - 1e-4, f"{name}: a better unobserved item was left out"


def test_observed_order(case):
    name, _, train, model = case
    ranker = Ranker(model, train)
    users = np.arange(10, 20)
    block = train.rows(10, 20)
    ordered = ranker.order_observed(users, block)
    with torch.no_grad():
        scores = model.eval().scores(torch.from_numpy(users), train).numpy()
    for r, u in enumerate(users):
        row = ordered.items[ordered.offsets[r] : ordered.offsets[r + 1]]
        assert sorted(row.tolist()) == sorted(train.row(u).tolist())
        assert np.all(np.diff(scores[r, row]) <= 1e-4)


@pytest.mark.parametrize("candidates", [N_ITEMS, 25])
def test_approximate_index_and_candidate_path(case, candidates):
    """An IVF index that probes every list, over embeddings or (candidate-then-rescore) over a model's
    candidate vectors: with every item a candidate, the lists are the exact ones for every teacher; with 25
    candidates for a top-20, still exact where the candidate vectors are the scores (Mult-VAE's)."""
    name, variant, train, model = case
    params = model.optimizer_parameters()
    opt = RowwiseAdam(params, lr=1e-2) if params else None
    model.fit_epoch(train, np.random.default_rng(0), 64, opt)
    ivf = EvalConfig(index="ivf", ivf_nlist=2, ivf_nprobe=2)
    approx, exact = Ranker(model, train, ivf, candidates=candidates), Ranker(model, train)
    with torch.no_grad():
        has_vectors = model.eval().embeddings() is not None or model.candidate_embeddings(train) is not None
    assert approx.approximate == has_vectors and not exact.approximate
    if approx.candidates:
        assert approx.candidates == candidates and model.embeddings() is None
    if model.exact_candidates:  # its candidate vectors are its scores: ranked by the index directly
        assert approx.approximate and approx.candidates == 0
    recall = recall_vs_exact(approx, exact, train, np.arange(N_USERS), 20)
    if candidates == N_ITEMS or approx.candidates == 0 or (name, variant) == ("ae", ""):
        assert recall == pytest.approx(1.0, abs=0.01), (name, recall)  # a near-tie may swap at the cut
    else:
        assert 0.0 <= recall <= 1.0
    top = approx.topk(np.arange(N_USERS), 20, train.offsets, train.items)
    for u in range(N_USERS):
        row = top[u][top[u] >= 0]
        assert not set(row.tolist()) & set(train.row(u).tolist()) and len(set(row.tolist())) == len(row)


class _FixedEmbeddings(torch.nn.Module):
    """A model that is only its (users, items) inner-product embeddings: what `Ranker` reads."""

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        super().__init__()
        self.users, self.items = users, items
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # Ranker reads the device from a parameter

    def embeddings(self):
        return self.users, self.items, "ip"


def _brute_recall(users_emb, items, train, users, k, got) -> float:
    """recall of `got` against a per-user numpy sort of the inner products, train items excluded."""
    return float(np.mean(_brute_rows(users_emb, items, train, users, k, got)))


def _brute_rows(users_emb, items, train, users, k, got) -> list[float]:
    """`_brute_recall` per user."""
    rows = []
    for r, u in enumerate(users):
        s = items.astype(np.float64) @ users_emb[u].astype(np.float64)
        s[train.row(u)] = -np.inf
        want = np.argsort(-s, kind="stable")[:k]
        rows.append(len(np.intersect1d(got[r][got[r] >= 0], want)) / k)
    return rows


def test_calibrate_breadth_sizes_the_probes_to_the_target():
    """teachers.export_recall_target: the IVF probes double from 1 of 64 lists until recall@50 on the
    calibration users reaches the target -- the first doubling that does, measured here by brute force
    -- and with target 1 every list is probed (an exhaustive search: the exact lists); a flat index is
    left as it is."""
    from test_retrieval import unequal_norms_case

    from hetcomp_dist.data.dataset import CSR
    from hetcomp_dist.evaluation import retrieval

    items, q = unequal_norms_case(3, n_items=4000, d=16, B=400)
    rng = np.random.default_rng(0)
    rows = [np.sort(rng.choice(4000, 5, replace=False)) for _ in range(len(q))]
    train = CSR(np.arange(0, 5 * len(q) + 1, 5, dtype=np.int64), np.concatenate(rows).astype(np.int32))
    model, k, calib = _FixedEmbeddings(q, items), 50, np.arange(200)
    exact = Ranker(model, train)

    def ranker(nprobe: int) -> Ranker:
        return Ranker(model, train, EvalConfig(index="ivf", ivf_nlist=64, ivf_nprobe=nprobe))

    def per_user(r: Ranker, users: np.ndarray) -> np.ndarray:
        ex = train.take(users)
        got = r.topk(users, k, ex.offsets, ex.items)
        return np.asarray(_brute_rows(q, items, train, users, k, got))

    def recall(r: Ranker, users: np.ndarray) -> float:
        return float(per_user(r, users).mean())

    def lower(r: Ranker, users: np.ndarray) -> float:
        """mean less 2 * sqrt(2) standard errors, by hand"""
        rows = per_user(r, users)
        return float(rows.mean() - 2 * np.sqrt(2) * rows.std(ddof=1) / np.sqrt(len(rows)))

    approx = ranker(1)
    assert recall(approx, calib) < 0.9
    sized = calibrate_breadth(approx, exact, train, calib, k, 0.95)
    nprobe = retrieval.search_breadth(approx.index)["nprobe"]
    assert retrieval.search_breadth(approx.index) == {"nprobe": nprobe, "nlist": 64}
    assert sized["calibration_steps"] == np.log2(nprobe)
    assert sized["calibration_recall"] == pytest.approx(recall(approx, calib), abs=1e-9)
    assert sized["calibration_recall"] - sized["calibration_margin"] == pytest.approx(lower(approx, calib))
    assert sized["calibration_margin"] > 0 and lower(approx, calib) >= 0.95
    # the first doubling that reaches it with the margin; the bare mean there may already pass
    assert lower(ranker(nprobe // 2), calib) < 0.95
    assert recall(approx, np.arange(200, 400)) >= 0.95  # and it holds on users it was not sized on

    # exact_share: it stops short of the widening that reaches that share of the lists, and says exact
    short = ranker(1)
    stop = calibrate_breadth(short, exact, train, calib, k, 0.95, exact_share=nprobe / 64)
    assert stop["exact"] and retrieval.search_breadth(short.index)["nprobe"] == nprobe // 2
    assert stop["calibration_steps"] == sized["calibration_steps"] - 1
    assert stop["calibration_recall"] - stop["calibration_margin"] < 0.95
    above = ranker(1)  # a share the calibrated search stays under: as without one
    assert calibrate_breadth(above, exact, train, calib, k, 0.95, exact_share=(nprobe + 1) / 64) == sized
    assert not sized["exact"]

    full = ranker(1)
    calibrate_breadth(full, exact, train, calib, k, 1.0)
    assert retrieval.search_breadth(full.index) == {"nprobe": 64, "nlist": 64}
    assert recall(full, calib) == pytest.approx(1.0)
    flat = Ranker(model, train)
    calibrate_breadth(flat, exact, train, calib, k, 0.99)
    assert retrieval.search_breadth(flat.index) is None


def test_recall_margin_by_hand():
    """mean and 2 * sqrt(2) standard errors of per-user recalls: [1, 1, .9, .9] has mean .95, sample sd
    sqrt(.01 / 3), so the margin is 2 * sqrt(2) * .057735 / 2 = .081650; one user or none has no spread."""
    from hetcomp_dist.teachers.trajectory import recall_margin

    mean, margin = recall_margin(np.array([1.0, 1.0, 0.9, 0.9]))
    assert mean == pytest.approx(0.95) and margin == pytest.approx(0.0816497, abs=1e-6)
    assert recall_margin(np.array([0.7])) == (0.7, 0.0)
    assert recall_margin(np.array([1.0] * 50)) == (1.0, 0.0)  # a search that keeps every list
    assert recall_margin(np.zeros(0)) == (1.0, 0.0)


def test_widen_and_search_breadth():
    """IVF (plain and inner-product MIPS) doubles its probes up to every list, HNSW its efSearch up to
    the items held; exact indexes have no breadth and never widen."""
    from hetcomp_dist.evaluation import retrieval

    x = np.random.default_rng(0).normal(size=(800, 8)).astype(np.float32)
    for metric in ("ip", "l2"):
        index = retrieval.build_index(x, metric, "ivf", ivf_nlist=20, ivf_nprobe=3)
        seen = [retrieval.search_breadth(index)["nprobe"]]
        while retrieval.widen(index):
            seen.append(retrieval.search_breadth(index)["nprobe"])
        assert seen == [3, 6, 12, 20] and retrieval.search_breadth(index)["nlist"] == 20
    hnsw = retrieval.build_index(x, "ip", "hnsw", hnsw_ef_search=300)
    assert retrieval.widen(hnsw) and retrieval.search_breadth(hnsw) == {"ef_search": 600}
    assert retrieval.widen(hnsw) and retrieval.search_breadth(hnsw) == {"ef_search": 800}
    assert not retrieval.widen(hnsw)
    for kind in ("flat", "blocked", "pruned"):
        index = retrieval.build_index(x, "ip", kind)
        assert retrieval.search_breadth(index) is None and not retrieval.widen(index)


# --------------------------------------------------------------------------------------------- ALS
def _als(train, seed=0, **cfg):
    from test_model_contract import TEACHERS_CFG

    from hetcomp_dist.models.als import ALS

    torch.manual_seed(seed)
    return ALS(N_USERS, N_ITEMS, dataclasses.replace(TEACHERS_CFG, **cfg), train)


def _dense_objective(model, train, alpha, reg) -> float:
    """The ALS objective over the dense (users, items) matrix: a plain reference for tiny data."""
    x, y = model.user.detach().double().numpy(), model.item.detach().double().numpy()
    p = np.zeros((N_USERS, N_ITEMS))
    for u in range(N_USERS):
        p[u, train.row(u)] = 1.0
    c = 1.0 + alpha * p
    return float((c * (p - x @ y.T) ** 2).sum() + reg * ((x**2).sum() + (y**2).sum()))


def test_als_epochs_are_implicit_iterations_continued():
    """k fit_epochs (one ALS iteration each, from the current factors) = implicit's fit with k iterations,
    from the same factors, with the confidence 1 + alpha in the matrix; its objective is the dense one."""
    import scipy.sparse
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    train = tiny_train()
    model = _als(train, als_alpha=20.0, als_reg=0.5)
    u0, i0 = model.user.detach().numpy().copy(), model.item.detach().numpy().copy()
    rng = np.random.default_rng(0)
    losses = [model.objective(train, 16)]
    for _ in range(4):
        losses.append(model.fit_epoch(train, rng, 16, None) * N_USERS)
        assert losses[-1] == pytest.approx(_dense_objective(model, train, 20.0, 0.5), rel=1e-4)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])), losses  # ALS never goes uphill
    assert losses[-1] < 0.5 * losses[0]
    matrix = scipy.sparse.csr_matrix(
        (np.full(len(train.items), 21.0, np.float32), train.items, train.offsets), shape=(N_USERS, N_ITEMS)
    )
    with threadpool_limits(1, "blas"):
        ref = AlternatingLeastSquares(factors=16, regularization=0.5, iterations=4, num_threads=1)
        ref.user_factors, ref.item_factors = u0, i0
        ref.fit(matrix, show_progress=False)
    np.testing.assert_allclose(model.user.detach().numpy(), ref.user_factors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.item.detach().numpy(), ref.item_factors, rtol=1e-4, atol=1e-5)


def test_als_loss_is_the_objective_per_user():
    train = tiny_train()
    model = _als(train)
    model.fit_epoch(train, np.random.default_rng(0), 16, None)
    blocks = list(model.batches(train, np.random.default_rng(1), 7))
    assert sorted(np.concatenate([b["user"].numpy() for b in blocks]).tolist()) == list(range(N_USERS))
    with torch.no_grad():
        total = sum(float(model.loss(b)) * len(b["user"]) for b in blocks)
    assert total == pytest.approx(_dense_objective(model, train, model.alpha, model.reg), rel=1e-4)
    assert model.optimizer_parameters() == []


# ---------------------------------------------------------------------------------------- item-kNN
def _dense_train(train) -> np.ndarray:
    """(users, items) 0/1 train matrix of tiny data."""
    x = np.zeros((N_USERS, N_ITEMS))
    for u in range(N_USERS):
        x[u, train.row(u)] = 1.0
    return x


def _dense_cosine(train, shrink: float) -> np.ndarray:
    """(items, items) shrunk cosine of the train columns, co-counts / (norm x norm + shrink), zero
    diagonal: a plain reference for tiny data."""
    x = _dense_train(train)
    norms = np.sqrt(x.sum(0))
    cos = (x.T @ x) / np.maximum(np.outer(norms, norms) + shrink, 1e-12)
    np.fill_diagonal(cos, 0.0)
    return cos


def _iknn(train, k, shrink):
    from test_model_contract import TEACHERS_CFG

    from hetcomp_dist.models.iknn import ItemKNN

    model = ItemKNN(N_USERS, N_ITEMS, dataclasses.replace(TEACHERS_CFG, iknn_k=k, iknn_shrink=shrink), train)
    assert model.fit_epoch(train, np.random.default_rng(0), 16, None) == 0.0
    return model


@pytest.mark.parametrize("shrink", [0.0, 3.0])
def test_iknn_with_every_neighbour_sums_the_cosines(shrink):
    train = tiny_train()
    model = _iknn(train, 1000, shrink)  # more than the catalogue: every other item is a neighbour
    cos = _dense_cosine(train, shrink)
    with torch.no_grad():
        s = model.scores(torch.arange(N_USERS), train).numpy()
    want = np.stack([cos[train.row(u)].sum(0) for u in range(N_USERS)])
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shrink", [0.0, 3.0])
def test_iknn_keeps_each_items_k_most_similar(shrink):
    train = tiny_train()
    k = 5
    model = _iknn(train, k, shrink)
    cos = _dense_cosine(train, shrink)
    nbr, sim = model.neighbours.numpy(), model.similarity.detach().numpy()
    assert nbr.shape == sim.shape == (N_ITEMS, k)
    _assert_top_k(nbr, sim, cos, atol=1e-6)
    _assert_scores_sum_rows(model, train, [0, 1, 8, 9], atol=1e-6)


def _assert_top_k(nbr: np.ndarray, w: np.ndarray, ref: np.ndarray, atol: float) -> None:
    """Row i of (nbr, w) is the k largest entries of ref[i] other than i, distinct, best first."""
    for i in range(N_ITEMS):
        assert i not in nbr[i] and len(set(nbr[i])) == nbr.shape[1]
        np.testing.assert_allclose(w[i], ref[i, nbr[i]], rtol=1e-5, atol=atol)
        assert np.all(np.diff(w[i]) <= atol)
        rest = np.setdiff1d(np.arange(N_ITEMS), [i, *nbr[i]])
        if len(rest):
            assert w[i].min() >= ref[i, rest].max() - atol  # nothing better left out


def _assert_scores_sum_rows(model, train, users: list[int], atol: float) -> np.ndarray:
    """A user's scores sum the table rows of its train items; returns the dense (items, items) table."""
    nbr, w = model.neighbours.numpy(), model.similarity.detach().numpy()
    with torch.no_grad():
        s = model.scores(torch.tensor(users), train).numpy()
    dense = np.zeros((N_ITEMS, N_ITEMS))
    np.put_along_axis(dense, nbr.astype(np.int64), w, axis=1)
    want = np.stack([dense[train.row(u)].sum(0) for u in users])
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=atol)
    return dense


# ---------------------------------------------------------------------------------------- RP3beta
def _walk(train) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item -> user transition 1 / |U_i|, user -> item transition 1 / |I_u|, item degrees) of tiny data."""
    x = _dense_train(train)
    p_iu = x.T / np.maximum(x.sum(0)[:, None], 1)
    p_ui = x / np.maximum(x.sum(1, keepdims=True), 1)
    return p_iu, p_ui, x.sum(0)


def _dense_rp3(train, alpha: float, beta: float) -> np.ndarray:
    """(items, items) RP3beta weights written out as the walk's matrices, zero diagonal: the reference."""
    p_iu, p_ui, degree = _walk(train)
    w = (p_iu**alpha) @ (p_ui**alpha) / np.maximum(degree, 1) ** beta
    np.fill_diagonal(w, 0.0)
    return w


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.1), (0.3, 0.7)])
def test_rp3_keeps_each_items_k_largest_walk_weights(alpha, beta):
    """The neighbour table equals the dense walk matrix's k largest entries per row, and a user's scores
    sum the rows of its train items; with every neighbour, alpha = 1 and beta = 0 it is the plain
    three-step random walk."""
    from test_model_contract import TEACHERS_CFG

    from hetcomp_dist.models.iknn import RP3Beta

    train = tiny_train()
    ref = _dense_rp3(train, alpha, beta)
    for k in (5, 1000):
        cfg = dataclasses.replace(TEACHERS_CFG, rp3_k=k, rp3_alpha=alpha, rp3_beta=beta)
        model = RP3Beta(N_USERS, N_ITEMS, cfg, train)
        assert model.fit_epoch(train, np.random.default_rng(0), 16, None) == 0.0
        nbr, w = model.neighbours.numpy(), model.similarity.detach().numpy()
        assert nbr.shape == (N_ITEMS, min(k, N_ITEMS - 1))
        _assert_top_k(nbr, w, ref, atol=1e-7)
        dense = _assert_scores_sum_rows(model, train, list(range(N_USERS)), atol=1e-7)
        if k == 1000:
            np.testing.assert_allclose(dense, ref, rtol=1e-5, atol=1e-7)
    if (alpha, beta) == (1.0, 0.0):  # rows of the plain walk item -> user -> item sum to 1
        p_iu, p_ui, degree = _walk(train)
        walk = ref + np.diag(np.diag(p_iu @ p_ui))  # the diagonal the table leaves out
        np.testing.assert_allclose(walk.sum(1)[degree > 0], 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------- VAE loss bound
def _vae_loss_by_hand(core, batch, beta: float, bound: float) -> torch.Tensor:
    """The Mult-VAE objective written out: dense logits, log-softmax per row, and per latent the KL
    0.5 (v + mu^2 - 1 - logvar) with v = e^logvar up to `bound` and its tangent line at the bound past it,
    the sample's noise e^(logvar / 2) taken at min(logvar, bound)."""
    mu, logvar = core.encode(batch["x"])
    b = torch.tensor(bound)
    v = torch.where(logvar <= b, logvar.exp(), math.exp(bound) * (1 + logvar - b))
    z = mu + batch["eps"] * torch.exp(0.5 * torch.minimum(logvar, b))
    logp = torch.log_softmax(core.decode(z), dim=1)
    nll = -logp[batch["rows"], batch["cols"]].sum() / len(mu)
    kl = 0.5 * (v + mu**2 - 1 - logvar).sum(1).mean()
    return nll + beta * kl


def test_vae_loss_bounds_the_log_variance_only_where_it_overflows():
    """Below LOGVAR_MAX the loss is the plain Mult-VAE objective; an encoder whose log-variance is in the
    thousands (where exp overflows to inf) gives a finite loss, the variance linear past the bound, and a
    finite gradient that still pushes the log-variance down."""
    from hetcomp_dist.models.vae import LOGVAR_MAX, VAECore, multinomial_vae_loss, vae_batches

    torch.manual_seed(0)
    train = tiny_train()
    core = VAECore(N_ITEMS, hidden=8, dim=4)
    batch = next(vae_batches(train, N_ITEMS, 4, np.random.default_rng(0), batch_size=16, drop=0.0))
    fresh = multinomial_vae_loss(core, batch, beta=0.2)
    assert float(fresh) == pytest.approx(float(_vae_loss_by_hand(core, batch, 0.2, math.inf)), rel=1e-5)
    with torch.no_grad():
        core.enc_out.bias[4:] = 5000.0  # the second half of enc_out is the log-variance
    bounded = multinomial_vae_loss(core, batch, beta=0.2)
    assert not math.isfinite(float(_vae_loss_by_hand(core, batch, 0.2, math.inf)))  # what it guards against
    assert math.isfinite(float(bounded))
    assert float(bounded) == pytest.approx(float(_vae_loss_by_hand(core, batch, 0.2, LOGVAR_MAX)), rel=1e-5)
    bounded.backward()
    assert all(torch.isfinite(p.grad).all() for p in core.parameters() if p.grad is not None)
    # d loss / d logvar = beta * 0.5 (e^bound - 1) per row's mean: a descent step lowers the log-variance
    expected = 0.2 * 0.5 * (math.exp(LOGVAR_MAX) - 1)
    assert core.enc_out.bias.grad[4:].tolist() == pytest.approx([expected] * 4, rel=1e-4)


def _neumf(n_users: int, n_items: int, seed: int = 0):
    from hetcomp_dist.config import TeachersConfig
    from hetcomp_dist.models.neumf import NeuMF

    torch.manual_seed(seed)
    model = NeuMF(n_users, n_items, TeachersConfig(dim=8, dnn_mlp_dim=4, dnn_layers=2)).eval()
    with torch.no_grad():  # trained-sized weights, so the MLP term is not negligible beside the GMF one
        for p in model.parameters():
            p.normal_(0, 1.0)
    return model


def test_neumf_candidate_vectors_are_exact_where_the_mlp_is_linear():
    """With every ReLU's input positive (large first-layer biases) the MLP term is linear in the user's
    first-layer activation a_u, so its least-squares fit is exact: the candidate vectors' inner products
    equal the model's scores for every user, in the fit's sample or not (up to the fit's small ridge)."""
    model = _neumf(300, 40)
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.fill_(100.0)
    user, item, metric = model.candidate_embeddings()
    assert metric == "ip" and user.shape == (300, 8 + 1 + 4) and item.shape == (40, 8 + 1 + 4)
    with torch.no_grad():
        want = model.scores(torch.arange(300)).numpy()
    got = user @ item.T
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_neumf_candidate_vectors_solve_the_normal_equations_of_their_sample():
    """In general (ReLUs clipping) each item's MLP term is fitted, over the fit's sample of users, by
    m_i + beta_i . (a_u - mean a): checked against the MLP terms computed pair by pair -- the residuals sum
    to 0 over the sample and are orthogonal to the centred activations up to the ridge's pull on beta."""
    from hetcomp_dist.models import neumf

    n_users, n_items = 2 * neumf._CANDIDATE_USERS + 7, 30
    model = _neumf(n_users, n_items, seed=1)
    user, item, _ = model.candidate_embeddings()
    d = model.gmf_user.shape[1]
    step = n_users // neumf._CANDIDATE_USERS
    sample = np.arange(0, n_users, step)[: neumf._CANDIDATE_USERS]
    with torch.no_grad():
        u = torch.from_numpy(np.repeat(sample, n_items))
        i = torch.from_numpy(np.tile(np.arange(n_items), len(sample)))
        gmf = (model.gmf_user[u] * model.head.weight[0, :d] * model.gmf_item[i]).sum(1)
        term = (model.pair_scores(u, i) - gmf).view(len(sample), n_items).double().numpy()
        a = (model.mlp_user[torch.from_numpy(sample)] @ model.layers[0].weight[:, :4].T).double().numpy()
    a_c = a - a.mean(0)
    assert np.allclose(user[sample, d + 1 :], a_c, atol=1e-4)  # the user half: the centred activation
    assert np.allclose(user[:, d], 1.0)
    m, beta = item[:, d].astype(np.float64), item[:, d + 1 :].astype(np.float64)
    assert np.allclose(m, term.mean(0), atol=1e-4 * np.abs(term).max())
    resid = term - m - a_c @ beta.T  # (S, n_items)
    assert np.abs(resid.sum(0)).max() <= 1e-3 * np.abs(term).sum(0).max()
    ridge = neumf._RIDGE * (a_c**2).sum() / a_c.shape[1]
    normal = a_c.T @ resid - ridge * beta.T  # (h1, n_items): 0 at the ridge solution
    assert np.abs(normal).max() <= 1e-3 * (np.abs(a_c.T @ term).max() + 1.0)
    # and it fits the sample better than the mean alone (the vectors before 2026-12-08)
    assert (resid**2).sum() < ((term - m) ** 2).sum()
