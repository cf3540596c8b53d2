"""The options that make a step cost O(batch): sparse row-wise updates of embedding tables
(`models/rowwise.py`, ``teachers.sparse_updates`` / ``student.sparse_updates``), LightGCN's cached
propagation (``teachers.gnn_refresh_every``), the hashed I-AE input (``teachers.iae_hash_buckets``) and
the autoencoders' sampled softmax (``teachers.ae_decoder_samples``, ``iae_decoder_samples``).

Each one: what it computes against a plain reference (torch's Adam, the exact propagation, a per-entry
hash sum), that a step leaves every row outside the batch and its optimiser state bit for bit as it
was, and that quality on the tiny synthetic run stays within a stated tolerance of the exact setting.
The model contract (loss, scores, embeddings, state dict) runs over these options in
tests/test_model_contract.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_model_contract import N_USERS, TEACHERS_CFG, tiny_train

from hetcomp_dist.config import StudentConfig
from hetcomp_dist.models.iae import ItemAE, hash_users
from hetcomp_dist.models.registry import build_student, model_class
from hetcomp_dist.models.rowwise import RowwiseAdam, lookup
from hetcomp_dist.models.sampling import sampled_tail_lse
from hetcomp_dist.models.students import count_parameters
from hetcomp_dist.models.vae import log_normaliser

pytestmark = pytest.mark.usefixtures("_one_torch_thread")

SPARSE_TEACHERS = dataclasses.replace(TEACHERS_CFG, sparse_updates=True)


# ------------------------------------------------------------------------------------ RowwiseAdam
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_rowwise_adam_is_adam_when_every_row_is_in_every_step(weight_decay):
    """Lazy Adam differs from Adam only in the rows a step leaves out: with all rows in, it is Adam."""
    torch.manual_seed(0)
    dense = torch.nn.Parameter(torch.randn(12, 5))
    sparse = torch.nn.Parameter(dense.detach().clone())
    ref = torch.optim.Adam([dense], lr=0.05, weight_decay=weight_decay, foreach=False)
    opt = RowwiseAdam([sparse], lr=0.05, weight_decay=weight_decay)
    for _ in range(6):
        # every row once (a row looked up twice sums its gradients in another order in the two layouts)
        rows, target = torch.randperm(12), torch.randn(12, 5)
        for table, o in ((dense, ref), (sparse, opt)):
            o.zero_grad()
            (lookup(table, rows, table is sparse) - target).pow(2).sum().backward()
            o.step()
        assert sparse.grad.is_sparse
        assert torch.equal(dense, sparse)
        assert torch.equal(ref.state[dense]["exp_avg_sq"], opt.state[sparse]["exp_avg_sq"])


def test_rowwise_adam_steps_dense_gradients_as_torch_adam():
    """Parameters with dense gradients take torch's own (fused) Adam step, and the state dict is Adam's."""
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [
        torch.optim.Adam(nets[0].parameters(), lr=0.1, fused=True),
        RowwiseAdam(nets[1].parameters(), lr=0.1, fused=True),
    ]
    for _ in range(4):
        x = torch.randn(8, 4)
        for net, o in zip(nets, opts):
            o.zero_grad()
            net(x).pow(2).sum().backward()
            o.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    sd = opts[1].state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    fresh = RowwiseAdam(nets[1].parameters(), lr=0.1, fused=True)
    fresh.load_state_dict(sd)  # checkpoints round-trip
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], sd["state"][0]["exp_avg"])


# ------------------------------------------------------------------- a sparse step touches only its rows
def _teacher(name: str, **options):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SPARSE_TEACHERS, **options)
    return model_class(name, cfg)(N_USERS, 45, cfg, tiny_train())


def _teacher_rows(name: str, model, batch: dict) -> dict[str, torch.Tensor]:
    """Table name -> the rows `batch` looks up (the only rows a sparse step may change)."""
    if name == "gnn":
        nodes = [batch["user"], batch["pos"] + model.n_users, batch["neg"].reshape(-1) + model.n_users]
        return {"emb": torch.cat(nodes)}
    if name == "dnn":
        u, i = batch["user"], batch["item"]
        return {"gmf_user": u, "mlp_user": u, "gmf_item": i, "mlp_item": i}
    return {"user": batch["user"], "item": torch.cat([batch["pos"], batch["neg"].reshape(-1)])}


def _two_steps(model, opt, batches, rows_of) -> None:
    """Steps on batches[0], then checks that a step on batches[1] leaves every other row and its Adam
    moments bit for bit as they were, and changes rows of its own."""
    for k, batch in enumerate(batches[:2]):
        if k == 1:
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            state = {n: {s: v.clone() for s, v in opt.state[p].items()} for n, p in model.named_parameters()}
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
        model.after_step()
    params = dict(model.named_parameters())
    for table, rows in rows_of(batches[1]).items():
        p = params[table]
        assert p.grad.is_sparse, table
        out = torch.ones(len(p), dtype=torch.bool)
        out[rows] = False
        assert out.any() and not out.all()
        assert torch.equal(p.detach()[out], before[table][out]), table
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key][out], state[table][key][out]), (table, key)
        assert not torch.equal(p.detach()[~out], before[table][~out]), table


@pytest.mark.parametrize("name", ["mf", "ml", "dnn", "gnn"])
def test_sparse_teacher_step_touches_only_the_batch_rows(name):
    model = _teacher(name, gnn_refresh_every=4, gnn_walks=0)  # walks would touch their own rows too
    opt = RowwiseAdam(model.optimizer_parameters(), lr=0.01, fused=True)
    batches = list(model.batches(tiny_train(), np.random.default_rng(0), 6))
    _two_steps(model, opt, batches, lambda b: _teacher_rows(name, model, b))


@pytest.mark.parametrize("name", ["mf", "ml", "dnn"])
def test_sparse_student_step_touches_only_the_batch_users(name):
    """The student's per-user table is sparse (with weight decay on its batch rows only); item tables
    and towers stay dense."""
    torch.manual_seed(0)
    model = build_student(name, N_USERS, 45, StudentConfig(sparse_updates=True))
    opt = RowwiseAdam(model.parameters(), lr=0.01, weight_decay=1e-3)
    batches = list(model.batches(tiny_train(), np.random.default_rng(0), 6))
    _two_steps(model, opt, batches, lambda b: {"user_emb.weight": b["user"]})
    assert not model.item_emb.weight.grad.is_sparse


@pytest.mark.parametrize("name", ["mf", "ml", "dnn", "gnn"])
def test_sparse_and_dense_teachers_compute_the_same_gradient(name):
    """`teachers.sparse_updates` changes how the gradient is stored and applied, not its value."""
    grads = []
    for sparse in (False, True):
        model = _teacher(name, sparse_updates=sparse, gnn_refresh_every=4)
        batch = next(iter(model.batches(tiny_train(), np.random.default_rng(0), 16)))
        model.loss(batch).backward()
        grads.append({n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["ae", "iae"])
def test_sampled_autoencoder_step_touches_only_its_sampled_and_target_columns(name):
    """With a sampled softmax and sparse updates, a step changes only the decoder rows (weight and bias)
    of the batch's sampled and target columns and (Mult-VAE) the encoder's input rows of the columns its
    inputs hold -- the other rows and their Adam moments stay bit for bit -- and its gradient is the
    dense layers', stored sparse (the input layer's summed in another order: equal to float rounding)."""
    samples = {f"{name}_decoder_samples": 10}
    model = _teacher(name, **samples)
    assert model.core.sparse
    opt = RowwiseAdam(model.optimizer_parameters(), lr=0.01, fused=True)
    batches = list(model.batches(tiny_train(), np.random.default_rng(0), 4))

    def columns(batch):
        cols = torch.cat([batch["sample"], batch["cols"]])
        rows = {"core.dec.weight": cols, "core.dec.bias": cols}
        if name == "ae":  # Mult-VAE's input layer is items wide and its steps grow with users: row-wise too
            rows["core.enc_weight"] = batch["x"].coalesce().indices()[1]
        return rows

    _two_steps(model, opt, batches, columns)
    grads = []
    for sparse in (False, True):
        m = _teacher(name, sparse_updates=sparse, **samples)
        assert m.core.sparse == sparse and m.core.sparse_input == (sparse and name == "ae")
        batch = next(iter(m.batches(tiny_train(), np.random.default_rng(0), 4)))
        m.loss(batch).backward()
        grads.append({n: p.grad.to_dense() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "core.dec.bias" in grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-6, atol=1e-7)
    full = _teacher(name, **{f"{name}_decoder_samples": 0})
    # the full softmax's decoder stays dense; Mult-VAE's input layer is row-wise still
    assert not full.core.sparse and full.core.sparse_input == (name == "ae")


# -------------------------------------------------------------------------------- LightGCN's cache
def test_cached_lightgcn_is_exact_at_a_refresh_and_trains_its_batch_rows():
    """Right after a refresh the cached loss is the exact loss; without walks its gradient reaches the
    batch's layer-0 rows only, as the exact gradient w.r.t. the final embeddings / (L+1) plus the L2 term."""
    exact = _teacher("gnn", sparse_updates=False)
    cached = _teacher("gnn", gnn_refresh_every=2, gnn_walks=0)
    batch = next(iter(cached.batches(tiny_train(), np.random.default_rng(0), 16)))
    loss = cached.loss(batch)
    torch.testing.assert_close(loss, exact.loss(batch), rtol=1e-5, atol=1e-6)
    loss.backward()
    grad = cached.emb.grad.coalesce()
    nodes = torch.cat([batch["user"], batch["pos"] + N_USERS, batch["neg"] + N_USERS])
    assert set(grad.indices()[0].tolist()) == set(nodes.tolist())
    # reference: d loss / d e at the final embeddings, by autograd on a detached copy
    final = exact.propagate().detach().requires_grad_(True)
    u, i, j = batch["user"], batch["pos"] + N_USERS, batch["neg"] + N_USERS
    bpr = -torch.nn.functional.logsigmoid((final[u] * final[i]).sum(1) - (final[u] * final[j]).sum(1)).mean()
    bpr.backward()
    e0 = exact.emb.detach()
    counts = torch.bincount(nodes, minlength=len(e0)).float()[:, None]
    want = final.grad / (exact.n_layers + 1) + exact.l2 * 2 * e0 * counts / len(u)
    torch.testing.assert_close(grad.to_dense(), want * (counts > 0), rtol=1e-5, atol=1e-7)


def test_cached_lightgcn_walks_estimate_the_exact_gradient():
    """The random walks make the cached gradient an unbiased estimate of exact LightGCN's: with many walks
    it is within a few percent of it; the batch's own rows alone miss about half of it."""
    exact = _teacher("gnn", sparse_updates=False)
    batch = next(iter(exact.batches(tiny_train(), np.random.default_rng(0), 16)))
    exact.loss(batch).backward()
    want = exact.emb.grad
    error = {}
    for walks in (0, 2000):
        cached = _teacher("gnn", gnn_refresh_every=2, gnn_walks=walks)
        cached.loss(batch).backward()
        error[walks] = float((cached.emb.grad.to_dense() - want).norm() / want.norm())
    assert error[2000] < 0.06 and error[0] > 0.3, error


def test_cached_lightgcn_walk_gradient_sums_each_reached_row_once():
    """With sparse updates the walks' gradient comes from one autograd function (`_WalkGradient`) that sums
    the entries of every reached row itself: on the same walks (same seed) it is the dense layout's gradient
    (a gather per entry, summed by autograd), and the sparse gradient holds each row once."""
    batch = next(iter(_teacher("gnn").batches(tiny_train(), np.random.default_rng(1), 24)))
    grads = {}
    for sparse in (True, False):
        model = _teacher("gnn", gnn_refresh_every=3, gnn_walks=7, sparse_updates=sparse)
        torch.manual_seed(5)
        model.loss(batch).backward()
        grads[sparse] = model.emb.grad
    rows = grads[True].coalesce().indices()[0]
    assert grads[True].is_sparse and len(rows) == len(torch.unique(rows)) < len(grads[False])
    torch.testing.assert_close(grads[True].to_dense(), grads[False], rtol=1e-5, atol=1e-7)


def test_cached_lightgcn_refreshes_every_k_steps_and_every_epoch():
    model = _teacher("gnn", gnn_refresh_every=2)
    opt = RowwiseAdam(model.optimizer_parameters(), lr=0.05)
    train, seen = tiny_train(), []
    for epoch in range(2):
        for batch in model.batches(train, np.random.default_rng(epoch), 40):
            opt.zero_grad()
            model.loss(batch).backward()
            seen.append(model._hood_age)
            if model._hood_age == 1:  # just refreshed: the cache is the current table's neighbourhood
                torch.testing.assert_close(model._hood, model.neighbourhood(), rtol=0, atol=0)
            opt.step()
            assert not torch.equal(model._hood, model.neighbourhood())  # stale after a step
    steps = -(-len(train.items) // 40)
    assert seen == [1, 2] * (steps // 2) + [1] * (steps % 2) + [1, 2] * (steps // 2) + [1] * (steps % 2)


# -------------------------------------------------------------------------------------- hashed I-AE
def test_hashed_iae_input_layer_does_not_grow_with_users():
    """At 2,000,000 users the hashed I-AE's encoder is H x hidden; only the decoder (f + 1 per user: the
    model scores every user) grows with the user count. The exact input would add 2M x hidden more."""
    n_users, buckets, cfg = 2_000_000, 512, TEACHERS_CFG
    train = tiny_train()
    big = dataclasses.replace(
        train, offsets=np.concatenate([train.offsets, np.full(n_users - N_USERS, train.offsets[-1])])
    )
    model = ItemAE(n_users, 45, dataclasses.replace(cfg, iae_hash_buckets=buckets), big)
    h, d = cfg.ae_hidden, cfg.dim
    assert model.core.enc_weight.shape == (buckets, h)
    assert count_parameters(model) == buckets * h + h + (h * 2 * d + 2 * d) + n_users * (d + 1)
    # the item batch is capped so the (items, users) logits block stays within iae_max_logits
    assert model.max_batch == cfg.iae_max_logits // n_users
    batch = next(iter(model.batches(big, np.random.default_rng(0), 1024)))
    assert len(batch["index"]) == model.max_batch and batch["x"].shape == (model.max_batch, buckets)


def test_hashed_iae_input_is_the_signed_bucket_sum():
    train = tiny_train()
    model = ItemAE(N_USERS, 45, dataclasses.replace(TEACHERS_CFG, iae_hash_buckets=7), train)
    batch = next(iter(model.batches(train, np.random.default_rng(0), 10)))
    bucket, sign = hash_users(np.arange(N_USERS), 7)
    assert set(np.unique(sign)) == {-1.0, 1.0}
    # the same batch through the exact model (same RNG): its dropped-out, normalised columns
    exact = ItemAE(N_USERS, 45, TEACHERS_CFG, train)
    cols = next(iter(exact.batches(train, np.random.default_rng(0), 10)))["x"].to_dense().numpy()
    want = np.zeros((len(cols), 7), np.float32)
    for r, row in enumerate(cols):
        for u in np.nonzero(row)[0]:
            want[r, bucket[u]] += sign[u] * row[u]
    np.testing.assert_allclose(batch["x"].to_dense().numpy(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("block", [7, 16384])
def test_iae_log_softmax_scores_are_the_decoders_log_probabilities(monkeypatch, block):
    """teachers.iae_score = log_softmax: each user's score of item i is log softmax over users of the
    decoder's whole output for item i (computed here as one (items, users) block by torch) less the
    user's own bias b_u; the logit scores differ from them by one offset per item; the embeddings
    score the same; a training-mode step does not reuse a stale normaliser."""
    from hetcomp_dist.models import iae

    monkeypatch.setattr(iae, "_LSE_BLOCK", block)  # several user blocks, and one
    monkeypatch.setattr(iae, "_LSE_ITEMS", 6 if block == 7 else 4096)  # several item chunks, and one
    train = tiny_train()
    cfg = dataclasses.replace(TEACHERS_CFG, iae_score="log_softmax")
    torch.manual_seed(0)
    model = ItemAE(N_USERS, 45, cfg, train)
    with torch.no_grad():
        model.core.dec.bias.normal_(0, 1.0)  # the per-user bias b_u is in the normaliser, not the score
        model.eval()
        feats = model.item_features()
        logp = torch.log_softmax(model.core.dec(feats), dim=1).T  # (users, items)
        users = torch.arange(N_USERS)
        got = model.scores(users)
        torch.testing.assert_close(got, logp - model.core.dec.bias[:, None], rtol=1e-5, atol=1e-5)
        user, item, metric = model.embeddings()
        assert metric == "ip" and user.shape == (N_USERS, cfg.dim + 1)
        np.testing.assert_allclose(user @ item.T, got.numpy(), rtol=1e-5, atol=1e-5)
        torch.manual_seed(0)
        plain = ItemAE(N_USERS, 45, TEACHERS_CFG, train)
        plain.load_state_dict(model.state_dict())
        offset = plain.eval().scores(users) - got  # lse_i - 0: the same for every user
        torch.testing.assert_close(offset, offset[:1].expand_as(offset), rtol=0, atol=1e-5)
        assert float(offset.std(0).max()) < 1e-5 and float(offset[0].std()) > 0
        model.core.dec.weight.mul_(2.0)  # new parameters: the eval cache is dropped on train()/eval()
        model.train()
        model.eval()
        want = torch.log_softmax(model.core.dec(feats), dim=1).T - model.core.dec.bias[:, None]
        torch.testing.assert_close(model.scores(users), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- the sampled normaliser
def test_sampled_tail_lse_against_a_per_row_loop():
    """Each row: its sampled columns outside its excluded set, summed in exp space and scaled by
    |tail| / |kept|; -inf where none is kept; the exact log-sum-exp of its tail when every column is
    sampled."""
    g = torch.Generator().manual_seed(3)
    B, N = 6, 40
    logits_all = torch.randn(B, N, generator=g, dtype=torch.float64) * 3
    excluded = {b: set(torch.randperm(N, generator=g)[: 3 + 5 * b].tolist()) for b in range(B)}
    sample = torch.randperm(N, generator=g)[:12]
    excluded[5] |= set(sample.tolist())  # a row whose tail the sample misses entirely
    rows = torch.tensor([b for b in range(B) for _ in excluded[b]])
    cols = torch.tensor([j for b in range(B) for j in sorted(excluded[b])])
    got = sampled_tail_lse(logits_all[:, sample], sample, rows, cols, N)
    for b in range(B):
        kept = [j for j in sample.tolist() if j not in excluded[b]]
        if not kept:
            assert got[b] == float("-inf")
            continue
        total = sum(float(torch.exp(logits_all[b, j])) for j in kept) * (N - len(excluded[b])) / len(kept)
        assert float(got[b]) == pytest.approx(np.log(total), rel=1e-12)
    every = torch.randperm(N, generator=g)
    full = sampled_tail_lse(logits_all[:, every], every, rows, cols, N)
    for b in range(B):
        tail = [j for j in range(N) if j not in excluded[b]]
        want = torch.logsumexp(logits_all[b, tail], 0) if tail else torch.tensor(float("-inf"))
        assert float(full[b]) == pytest.approx(float(want), rel=1e-12)


@pytest.mark.parametrize("name", ["ae", "iae"])
def test_sampled_normaliser_is_exact_with_every_column_and_unbiased_in_its_sum(name):
    """The autoencoders' softmax normaliser from a sample: with every column sampled it is the exact
    log-sum-exp of the logits block; over many samples, exp() of it (own targets + the scaled sample)
    averages to the exact sum; and a batch's "sample" holds the configured number of distinct columns."""
    model = _teacher(name, **{f"{name}_decoder_samples": 10})
    n_cols = model.core.dec.out_features
    train = tiny_train()
    batch = next(iter(model.batches(train, np.random.default_rng(0), 8)))
    assert len(batch["sample"]) == 10 == len(set(batch["sample"].tolist()))
    assert int(batch["sample"].max()) < n_cols
    with torch.no_grad():
        core = model.core.double()
        mu, _ = core.encode(batch["x"].double())
        f = core.features(mu)
        rows, cols = batch["rows"], batch["cols"]
        picked = (f[rows] * core.dec.weight[cols]).sum(1) + core.dec.bias[cols]
        exact = torch.logsumexp(core.dec(f), 1)
        every = torch.from_numpy(np.random.default_rng(1).permutation(n_cols))
        np.testing.assert_allclose(log_normaliser(core, f, rows, cols, picked, every), exact, rtol=1e-12)
        rng, sums = np.random.default_rng(2), torch.zeros_like(exact)
        draws = 4000
        for _ in range(draws):
            sample = torch.from_numpy(rng.choice(n_cols, 10, replace=False))
            sums += torch.exp(log_normaliser(core, f, rows, cols, picked, sample))
    np.testing.assert_allclose(sums / draws, torch.exp(exact), rtol=0.03)


def test_sampled_iae_batch_is_capped_by_its_sampled_block():
    """With sampled users the I-AE's logits block is (items, samples): the item batch cap follows it."""
    cfg = dataclasses.replace(TEACHERS_CFG, iae_max_logits=2000, iae_decoder_samples=20)
    assert ItemAE(N_USERS, 45, cfg, tiny_train()).max_batch == 100
    exact = dataclasses.replace(cfg, iae_decoder_samples=0)
    assert ItemAE(N_USERS, 45, exact, tiny_train()).max_batch == 2000 // N_USERS


# ------------------------------------------------------------------------ quality on the tiny run
def valid_recall_at_50(model, train, valid) -> float:
    """Mean over users with valid items of |top-50 unobserved ∩ valid| / |valid|: a plain reference."""
    with torch.no_grad():
        scores = model.eval().scores(torch.arange(train.n), train).numpy().copy()
    hits = []
    for u in range(train.n):
        if len(valid.row(u)) == 0:
            continue
        scores[u, train.row(u)] = -np.inf
        top = np.argsort(-scores[u], kind="stable")[:50]
        hits.append(len(np.intersect1d(top, valid.row(u))) / len(valid.row(u)))
    return float(np.mean(hits))


def best_valid(run: str, name: str, epochs: int, seed: int = 0, **options) -> float:
    """Best valid R@50 (evaluated every 2 epochs) of teacher `name` trained in-process on `run`, with the
    training settings of tests/test_teachers_run.py and the given options."""
    from test_teachers_run import tiny_config

    from hetcomp_dist.data.dataset import load_manifest, load_split
    from hetcomp_dist.teachers.fit import resolve

    m, train, valid = load_manifest(run), load_split(run, "train"), load_split(run, "valid")
    teachers = dataclasses.replace(tiny_config(run).teachers, seed=seed, **options)
    params, cfg = resolve(teachers, name)
    torch.manual_seed(seed)
    model = model_class(name, cfg)(m["n_users"], m["n_items"], cfg, train)
    opt = RowwiseAdam(model.optimizer_parameters(), lr=params.lr, fused=True)
    best = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        model.fit_epoch(train, np.random.default_rng([seed, epoch]), params.batch_size, opt)
        if epoch % 2 == 0:
            best = max(best, valid_recall_at_50(model, train, valid))
    return best


# Valid R@50 of an option may fall below the exact setting's by at most this on the tiny synthetic run
# (400 users: across seeds the same setting spreads by about as much).
QUALITY_TOLERANCE = 0.03


@pytest.mark.parametrize("name", ["mf", "ml", "dnn"])
def test_sparse_updates_keep_teacher_quality(synth_run, name):
    dense = best_valid(synth_run, name, 20, sparse_updates=False)
    sparse = best_valid(synth_run, name, 20, sparse_updates=True)
    assert sparse >= dense - QUALITY_TOLERANCE, (name, dense, sparse)


def test_cached_lightgcn_keeps_quality(synth_run):
    """Refreshed once an epoch, with 4 walks per batch node and sparse updates, against the exact
    per-batch propagation (the batch's own rows alone, without walks, fall well below it)."""
    exact = best_valid(synth_run, "gnn", 24, sparse_updates=False)
    cached = best_valid(synth_run, "gnn", 24, gnn_refresh_every=10**6, gnn_walks=4, sparse_updates=True)
    assert cached >= exact - QUALITY_TOLERANCE, (exact, cached)


def test_hashed_iae_keeps_quality(synth_run):
    """128 buckets for the run's 400 users: about 3 users a bucket (2^18 buckets hold about 4 at 1M users)."""
    exact = best_valid(synth_run, "iae", 12)
    hashed = best_valid(synth_run, "iae", 12, iae_hash_buckets=128)
    assert hashed >= exact - QUALITY_TOLERANCE, (exact, hashed)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", ["ae", "iae"])
def test_sampled_decoder_keeps_quality(synth_run, name, sparse):
    """A quarter of the columns sampled per batch (75 of 300 items for Mult-VAE, 100 of 400 users for the
    I-AE) against the full softmax; with sparse updates too, the decoder's sampled rows row-wise."""
    exact = best_valid(synth_run, name, 12)
    samples = {f"{name}_decoder_samples": 75 if name == "ae" else 100}
    sampled = best_valid(synth_run, name, 12, sparse_updates=sparse, **samples)
    assert sampled >= exact - QUALITY_TOLERANCE, (exact, sampled)


def test_sparse_updates_keep_student_quality(tmp_path):
    """HetComp's MF student on the planted toy run (DKC rounds replayed), 20 epochs, dense and sparse."""
    from hetcomp_dist.config import load_config
    from hetcomp_dist.student.trainer import train_student
    from hetcomp_dist.testing.toyrun import replay_round, write_toy_run

    valid = {}
    for sparse in (False, True):
        run = str(tmp_path / f"sparse-{sparse}")
        write_toy_run(run, n_users=300, n_items=400, rounds=3)
        overrides = ["student.batch_size=256", "student.num_workers=0", "student.max_epochs=20"]
        cfg = load_config(None, [*overrides, f"student.sparse_updates={str(sparse).lower()}"])
        valid[sparse] = train_student(run, cfg, dkc_fn=replay_round)["valid"]["R@50"]
    assert valid[True] >= valid[False] - QUALITY_TOLERANCE, valid


# ------------------------------------------------------------------------------ negative sampling
def test_pair_index_contains_against_a_set():
    """`contains` answers membership of (user, item) in the train lists -- unsorted rows with a repeated
    item, an empty row, a CSR that starts at user 100 (a rank's slice), and users outside it (False) --
    as a Python set does; `sample_negatives` never returns a train item when the catalogue has room."""
    from hetcomp_dist.data.dataset import CSR
    from hetcomp_dist.models.sampling import PairIndex, contains, sample_negatives

    rng = np.random.default_rng(3)
    rows = [rng.choice(50, rng.integers(0, 12), replace=False) for _ in range(40)]
    rows[5] = np.array([], dtype=np.int64)
    rows[7] = np.array([9, 3, 9, 1])
    lengths = [len(r) for r in rows]
    train = CSR(
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.concatenate(rows).astype(np.int32), 100
    )
    pairs = {(100 + u, int(i)) for u, r in enumerate(rows) for i in r}
    users = rng.integers(90, 150, 5_000)
    items = rng.integers(0, 50, 5_000)
    got = contains(PairIndex(train), users, items)
    assert got.tolist() == [(int(u), int(i)) in pairs for u, i in zip(users, items)]
    assert got.any() and not got.all()
    inside = np.arange(100, 140)
    neg = sample_negatives(PairIndex(train), inside, 50, rng, n=30)
    assert not any((int(u), int(j)) in pairs for u, row in zip(inside, neg) for j in row)


def test_blocked_linear_logsumexp_is_the_plain_one():
    """The item-AE's normaliser in blocks of users (`teachers.iae_softmax_block`, a block size that does not
    divide the columns, and one larger than a row's magnitude range) gives logsumexp(linear) and its three
    gradients (float64, upstream weights not all 1); and a whole item-AE loss with blocks matches the
    unblocked one."""
    from hetcomp_dist.models.vae import _BlockedLinearLSE

    g = torch.Generator().manual_seed(0)
    f0 = torch.randn(9, 5, generator=g, dtype=torch.float64) * 3
    w0 = torch.randn(1001, 5, generator=g, dtype=torch.float64)
    b0 = torch.randn(1001, generator=g, dtype=torch.float64)
    up = torch.rand(9, generator=g, dtype=torch.float64) + 0.5
    out = []
    for block in (0, 64, 1000):
        f, w, b = (t.clone().requires_grad_() for t in (f0, w0, b0))
        if block:
            lse = _BlockedLinearLSE.apply(f, w, b, block)
        else:
            lse = torch.logsumexp(torch.nn.functional.linear(f, w, b), dim=1)
        (lse * up).sum().backward()
        out.append((lse.detach(), f.grad, w.grad, b.grad))
    for got in out[1:]:
        for x, y in zip(got, out[0]):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)

    losses = []
    for block in (0, 7):
        model = _teacher("iae", iae_softmax_block=block)
        model.train()
        batch = next(iter(model.batches(tiny_train(), np.random.default_rng(0), 16)))
        loss = model.loss(batch)
        loss.backward()
        losses.append(
            (loss.detach(), model.core.dec.weight.grad.clone(), model.core.enc_weight.grad.to_dense())
        )
    for x, y in zip(*losses):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_rows", [50, 100_000])  # the distinct rows found by a scan, or sorted
@pytest.mark.parametrize("width", [(), (6,), (2, 3)])
def test_rowwise_coalesce_is_torchs(n_rows, width):
    """rowwise.coalesce: the distinct rows ascending and their entries summed, as torch's coalesce gives
    them (duplicates in any order, a vector's entries, a table's rows and a deeper value shape)."""
    from hetcomp_dist.models.rowwise import coalesce

    g = torch.Generator().manual_seed(n_rows)
    idx = torch.randint(0, min(n_rows, 40), (300,), generator=g) * (n_rows // min(n_rows, 40))
    vals = torch.randn(300, *width, generator=g, dtype=torch.float64)
    grad = torch.sparse_coo_tensor(idx[None], vals, (n_rows, *width), check_invariants=False)
    got, want = coalesce(grad), grad.coalesce()
    assert got.is_coalesced() and torch.equal(got.indices(), want.indices())
    torch.testing.assert_close(got.values(), want.values(), rtol=1e-12, atol=1e-12)
    assert coalesce(want) is not None and torch.equal(coalesce(want).indices(), want.indices())
