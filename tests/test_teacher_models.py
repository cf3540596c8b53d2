"""One contract suite, run against every teacher model (and the CDAE variant of the AE).

Each model: a few optimiser steps on tiny clustered data lower its loss on fixed batches; scores
have shape (B, n_items) and agree with its embeddings; the trajectory ranker's top-K never holds a
train item and equals a brute-force per-user sort; the state dict round-trips through bytes loaded
with weights_only=True.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.registry import TEACHERS, model_class
from hetcomp_dist.teachers.trajectory import Ranker

N_USERS, N_ITEMS = 60, 45

CASES = [(name, {}) for name in TEACHERS] + [("ae", {"ae_variant": "cdae"})]
IDS = [name if not extra else f"{name}-{extra['ae_variant']}" for name, extra in CASES]


def tiny_train(seed: int = 0) -> CSR:
    """Two user groups that like two item groups (so a model has something to learn)."""
    rng = np.random.default_rng(seed)
    lists = []
    for u in range(N_USERS):
        group = np.arange(0, 25) if u % 2 == 0 else np.arange(20, N_ITEMS)
        n = rng.integers(4, 10)
        lists.append(np.sort(rng.choice(group, size=n, replace=False)))
    lists[3] = np.zeros(0, np.int64)  # a user without train items must not break anything
    offsets = np.zeros(N_USERS + 1, np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    return CSR(offsets, np.concatenate(lists).astype(np.int32), 0)


def make(name: str, extra: dict, train: CSR, seed: int = 0):
    cfg = dataclasses.replace(
        TeachersConfig(dim=16, ae_hidden=32, dnn_mlp_dim=8, ae_anneal_steps=50, cml_negatives=3), **extra
    )
    torch.manual_seed(seed)
    return model_class(name, cfg)(N_USERS, N_ITEMS, cfg, train)


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    name, extra = request.param
    train = tiny_train()
    return name, extra, train, make(name, extra, train)


def _mean_loss(model, batches) -> float:
    with torch.no_grad():
        return float(np.mean([model.loss(b).item() for b in batches]))


def test_registry_names_match_config():
    from hetcomp_dist.config import TEACHER_NAMES

    assert tuple(TEACHERS) == TEACHER_NAMES


def test_loss_falls(case):
    name, _, train, model = case
    model.train()
    fixed = list(model.batches(train, np.random.default_rng(123), 64))
    before = _mean_loss(model, fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    steps = 0
    while steps < 60:
        for batch in model.batches(train, rng, 64):
            steps += 1
            opt.zero_grad()
            loss = model.loss(batch)
            assert torch.isfinite(loss)
            loss.backward()
            opt.step()
            model.after_step()
    after = _mean_loss(model, fixed)
    assert after < 0.9 * before, (name, before, after)


def test_scores_shape_and_embeddings(case):
    name, _, train, model = case
    model.eval()
    users = torch.tensor([0, 5, 7, 59])
    with torch.no_grad():
        s = model.scores(users, train)
        emb = model.embeddings()
    assert s.shape == (4, N_ITEMS)
    assert torch.isfinite(s).all()
    if emb is not None:  # the FAISS path must rank exactly like the scores (up to a per-user constant)
        u, i, metric = emb
        ref = (
            u[users.numpy()] @ i.T if metric == "ip" else -((u[users.numpy()][:, None] - i[None]) ** 2).sum(2)
        )
        diff = s.numpy() - ref
        np.testing.assert_allclose(diff - diff[:, :1], 0, atol=1e-4)


def test_topk_excludes_train_and_matches_brute_force(case):
    name, _, train, model = case
    # a few steps so scores are not all near-equal
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for batch in model.batches(train, np.random.default_rng(0), 64):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
        model.after_step()
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


def test_state_dict_round_trip(case):
    name, extra, train, model = case
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = make(name, extra, train, seed=99)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    users = torch.arange(N_USERS)
    with torch.no_grad():
        a = model.eval().scores(users, train)
        b = other.eval().scores(users, train)
    torch.testing.assert_close(a, b)
    assert set(model.state_dict()) == set(other.state_dict())
