"""The teachers stage's trajectory ranker over every teacher model (and the CDAE variant of the AE).

For each model: the ranker's top-K never holds a train item and equals a brute-force per-user sort;
the observed items come back ordered by score. What every model (teacher or student) promises -- loss,
scores, embeddings, state dict -- is checked once for all in tests/test_model_contract.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model_contract import N_ITEMS, N_USERS, TEACHER_CASES, tiny_train

from hetcomp_dist.teachers.trajectory import Ranker


@pytest.fixture(params=TEACHER_CASES, ids=[c.id for c in TEACHER_CASES])
def case(request):
    c = request.param
    train = tiny_train()
    return c.name, c.variant, train, c.build(train)


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
