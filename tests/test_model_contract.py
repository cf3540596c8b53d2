"""One contract suite, run against every model of `models/registry.py`: the teachers (TEACHERS and their
VARIANTS) and the students (STUDENTS), through one parametrised fixture.

Every model (the `Recommender` contract of `models/base.py`): a few optimiser steps on tiny clustered
data lower its loss on fixed batches, every loss finite (a model that fits itself in `fit_epoch`: its
epochs separate the clusters); scores have shape (B, n_items) and agree with
its embeddings, through FAISS too; the state dict round-trips through bytes loaded with
weights_only=True into a model rebuilt from `extra_state`, with identical scores; its modules import
neither Ray nor DDP. Then what every student adds for the objectives: the factorised score, one
BPR/hinge triple per interaction, per-user tables, embeddings that are snapshots.

Checks of one model (or of the teachers stage's ranker over each teacher) stay beside it, in
tests/test_teacher_models.py and tests/test_student_models.py.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import torch

from hetcomp_dist.config import TEACHER_NAMES, StudentConfig, TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.registry import STUDENTS, TEACHERS, VARIANTS, build_student, model_class
from hetcomp_dist.models.rowwise import RowwiseAdam
from hetcomp_dist.models.students import count_parameters

# one intra-op torch thread per test (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("_one_torch_thread")

N_USERS, N_ITEMS = 60, 45
TEACHERS_CFG = TeachersConfig(dim=16, ae_hidden=32, dnn_mlp_dim=8, ae_anneal_steps=50, cml_negatives=3)
STUDENT_CFG = StudentConfig()


@dataclasses.dataclass(frozen=True)
class Case:
    """One registered model: a teacher (`name`, or its `variant`) or a student, with config `options`
    (the settings that change how a model trains: sparse updates, LightGCN's cache, I-AE's hashing)."""

    kind: str  # "teacher" | "student"
    name: str
    variant: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        opts = [f"{k}={v}" for k, v in self.options]
        return "-".join(x for x in (self.kind, self.name, self.variant, *opts) if x)

    def teachers_cfg(self) -> TeachersConfig:
        cfg = dataclasses.replace(TEACHERS_CFG, **dict(self.options))
        if not self.variant:
            return cfg
        return dataclasses.replace(cfg, **{f"{self.name}_variant": self.variant})

    def student_cfg(self) -> StudentConfig:
        return dataclasses.replace(STUDENT_CFG, **dict(self.options))

    def build(self, train: CSR, seed: int = 0, **args) -> Recommender:
        """The model on N_USERS x N_ITEMS, initialised from seed; `args` override constructor arguments."""
        torch.manual_seed(seed)
        if self.kind == "student":
            cfg = self.student_cfg()
            if not args:
                return build_student(self.name, N_USERS, N_ITEMS, cfg)
            return STUDENTS[self.name](**{"n_users": N_USERS, "n_items": N_ITEMS, "cfg": cfg, **args})
        cfg = self.teachers_cfg()
        return model_class(self.name, cfg)(
            **{"n_users": N_USERS, "n_items": N_ITEMS, "cfg": cfg, "train": train, **args}
        )


# the other setting of each option that changes how a model trains (its default is in the plain cases)
SPARSE = (("sparse_updates", not TeachersConfig().sparse_updates),)
OPTION_CASES = [
    *(Case("teacher", name, options=SPARSE) for name in ("mf", "ml", "dnn")),
    Case("teacher", "gnn", options=(("gnn_refresh_every", 3), ("sparse_updates", True))),
    Case("teacher", "iae", options=(("iae_hash_buckets", 16),)),
    Case("teacher", "iae", options=(("iae_score", "log_softmax"),)),
]
TEACHER_CASES = [
    *(Case("teacher", name) for name in TEACHERS),
    *(Case("teacher", name, variant) for name, variant in VARIANTS),
    *OPTION_CASES,
]
STUDENT_SPARSE = (("sparse_updates", not StudentConfig().sparse_updates),)
CASES = TEACHER_CASES + [Case("student", name, options=o) for o in ((), STUDENT_SPARSE) for name in STUDENTS]


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


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request):
    c = request.param
    train = tiny_train()
    return c, train, c.build(train)


def _mean_loss(model, batches) -> float:
    with torch.no_grad():
        return float(np.mean([model.loss(b).item() for b in batches]))


# ------------------------------------------------------------------------------------ the registries
def test_registries_match_config():
    assert tuple(TEACHERS) == TEACHER_NAMES
    for (name, variant), cls in VARIANTS.items():  # a variant trains as its teacher under its option
        assert name in TEACHERS
        assert model_class(name, Case("teacher", name, variant).teachers_cfg()) is cls
    assert all(issubclass(cls, Recommender) for cls in [*TEACHERS.values(), *VARIANTS.values()])
    assert all(issubclass(cls, Recommender) for cls in STUDENTS.values())


# ------------------------------------------------------------------------------ the Recommender contract
def test_loss_is_finite_and_falls(case):
    c, train, model = case
    if type(model).loss is Recommender.loss:
        pytest.skip(f"{c.id} has no loss: it fits itself (test_self_fitted_model_learns_the_clusters)")
    model.train()
    fixed = list(model.batches(train, np.random.default_rng(123), 64))
    before = _mean_loss(model, fixed)
    opt = RowwiseAdam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    steps = 0
    while steps < 60:
        for batch in model.batches(train, rng, 64):
            steps += 1
            opt.zero_grad()
            loss = model.loss(batch)
            assert loss.shape == () and torch.isfinite(loss)
            loss.backward()
            opt.step()
            model.after_step()
    after = _mean_loss(model, fixed)
    assert after < 0.9 * before, (c.id, before, after)


SELF_FITTED = [c for c in TEACHER_CASES if not c.build(tiny_train()).optimizer_parameters()]


@pytest.mark.parametrize("c", SELF_FITTED, ids=[c.id for c in SELF_FITTED])
def test_self_fitted_model_learns_the_clusters(c):
    """A model with its own solver (no optimiser): a few `fit_epoch`s, each returning a finite loss,
    leave every user scoring its own item group's unobserved items above the other group's."""
    train = tiny_train()
    model = c.build(train)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert np.isfinite(model.fit_epoch(train, rng, 16, None))
    with torch.no_grad():
        s = model.eval().scores(torch.arange(N_USERS), train).numpy()
    own, other = np.arange(0, 20), np.arange(25, N_ITEMS)  # the groups' items that the other lacks
    for u in range(N_USERS):
        if len(train.row(u)) == 0:
            continue
        mine, theirs = (own, other) if u % 2 == 0 else (other, own)
        mine = np.setdiff1d(mine, train.row(u))
        assert s[u, mine].mean() > s[u, theirs].mean(), (c.id, u)


def test_scores_shape_and_embeddings(case):
    c, train, model = case
    model.eval()
    users = torch.tensor([0, 5, 7, 59])
    with torch.no_grad():
        s = model.scores(users, train)
        emb = model.embeddings()
    assert s.shape == (4, N_ITEMS)
    assert torch.isfinite(s).all()
    if emb is None:  # a scores-only model (the trajectory ranker scores it in blocks)
        return
    u, i, metric = emb
    assert metric in ("ip", "l2")
    assert u.shape[0] == N_USERS and i.shape[0] == N_ITEMS and u.shape[1] == i.shape[1]
    # the FAISS path must rank exactly like the scores (up to a per-user constant)
    ref = u[users.numpy()] @ i.T if metric == "ip" else -((u[users.numpy()][:, None] - i[None]) ** 2).sum(2)
    diff = s.numpy() - ref
    np.testing.assert_allclose(diff - diff[:, :1], 0, atol=1e-4)


def test_embeddings_rank_like_scores_through_faiss(case):
    c, train, model = case
    model.eval()
    with torch.no_grad():
        emb = model.embeddings()
        s = model.scores(torch.arange(N_USERS), train).numpy()
    if emb is None:
        return
    u, it, metric = emb
    assert u.dtype == np.float32 and it.dtype == np.float32, (u.dtype, it.dtype)
    if c.kind == "student":  # what a student serves: dimension-6 vectors, whatever its factorised form
        assert u.shape[1] == it.shape[1] == STUDENT_CFG.dim
    index = faiss.IndexFlatIP(it.shape[1]) if metric == "ip" else faiss.IndexFlatL2(it.shape[1])
    index.add(it)
    _, got = index.search(u, 10)
    want = np.argsort(-s, axis=1, kind="stable")[:, :10]
    # ties are measure-zero with random weights; compare the retrieved score values to be safe
    np.testing.assert_allclose(
        np.take_along_axis(s, got, 1), np.take_along_axis(s, want, 1), rtol=1e-4, atol=1e-5
    )


def test_pair_scores_are_the_scores_of_the_pairs(case):
    c, train, model = case
    rng = np.random.default_rng(0)
    users = torch.from_numpy(rng.integers(0, N_USERS, 300))  # repeated users, in no order
    items = torch.from_numpy(rng.integers(0, N_ITEMS, 300))
    with torch.no_grad():
        s = model.eval().scores(torch.arange(N_USERS), train)
        got = model.pair_scores(users, items, train)
    assert got.shape == (300,)
    np.testing.assert_allclose(got.numpy(), s[users, items].numpy(), rtol=1e-4, atol=1e-5)


def test_candidate_scores_are_the_scores_of_each_rows_candidates(case):
    """NeuMF's own block form and the default (pair_scores of the flattened pairs) alike; candidate counts
    above and below the catalogue size take NeuMF's two ways to its item half."""
    c, train, model = case
    rng = np.random.default_rng(1)
    users = torch.from_numpy(rng.choice(N_USERS, 7, replace=False))
    with torch.no_grad():
        s = model.eval().scores(torch.arange(N_USERS), train)
        for C in (3, 2 * N_ITEMS):
            cand = torch.from_numpy(rng.integers(0, N_ITEMS, (7, C)))  # repeats within a row too
            got = model.candidate_scores(users, cand, train)
            assert got.shape == (7, C)
            want = s[users[:, None], cand]
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_candidate_embeddings_have_the_shape_of_embeddings(case):
    """Offered only by models without embeddings (the approximate index's candidate path)."""
    c, train, model = case
    with torch.no_grad():
        emb, cand = model.eval().embeddings(), model.candidate_embeddings(train)
    if cand is None:
        return
    assert emb is None, "a model with embeddings is ranked through them"
    u, i, metric = cand
    assert metric in ("ip", "l2") and u.shape[0] == N_USERS and i.shape[0] == N_ITEMS
    assert u.shape[1] == i.shape[1] and np.isfinite(u).all() and np.isfinite(i).all()


def test_state_dict_round_trip(case):
    c, train, model = case
    extra = model.extra_state()
    # constructor arguments by name, plain enough to be stored beside the weights
    assert set(extra) <= set(inspect.signature(type(model).__init__).parameters), extra
    json.dumps(extra)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = c.build(train, seed=99, **extra)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    users = torch.arange(N_USERS)
    with torch.no_grad():
        a = model.eval().scores(users, train)
        b = other.eval().scores(users, train)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert set(model.state_dict()) == set(other.state_dict())


FORBIDDEN = ("ray", "torch.distributed", "torch.nn.parallel")


def _imports(path: str) -> set[str]:
    """Every module (and `module.name`) a source file imports."""
    out = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_model_modules_import_no_ray_or_ddp(case):
    """The model knows nothing of the distribution: Ray and DDP live in the stages that train it."""
    _, _, model = case
    files = {inspect.getfile(k) for k in type(model).__mro__ if k.__module__.startswith("hetcomp_dist.")}
    assert files
    for path in files:
        bad = sorted(m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
        assert not bad, (path, bad)
        assert "DistributedDataParallel" not in Path(path).read_text(), path


def test_importing_every_model_loads_no_ray():
    code = "import sys, hetcomp_dist.models.registry; print(sorted(m for m in sys.modules if m == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ------------------------------------------------------------------------------ the students' contract
# What the objectives use on top of the Recommender contract (`models/students.py`: Student).
NAMES = sorted(STUDENTS)


def _student(name, n_users=30, n_items=50, seed=0, options=()):
    torch.manual_seed(seed)
    return build_student(name, n_users, n_items, dataclasses.replace(STUDENT_CFG, **dict(options)))


def _train_csr(n_users=30, n_items=50, seed=0):
    rng = np.random.default_rng(seed)
    lists = [np.sort(rng.choice(n_items, size=rng.integers(3, 9), replace=False)) for _ in range(n_users)]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    return CSR(offsets, np.concatenate(lists).astype(np.int32), 0)


@pytest.mark.parametrize("name", NAMES)
def test_student_factorised_form_equals_scores(name):
    """The losses use user_side . item_side; it must be the model's score (ML: -||p - q||^2)."""
    m = _student(name)
    users = torch.arange(30)
    torch.testing.assert_close(m.user_side(users) @ m.item_side().T, m.scores(users), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [(), STUDENT_SPARSE], ids=["default", "sparse_updates"])
@pytest.mark.parametrize("name", NAMES)
def test_student_batches_and_base_training(name, options):
    """`batches` yields one triple per interaction with an unobserved negative; the loss falls."""
    train = _train_csr()
    m = _student(name, options=options)
    opt = RowwiseAdam(m.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    epoch_means = []
    for _epoch in range(40):
        seen, total = 0, 0.0
        for batch in m.batches(train, rng, 64):
            for u, j in zip(batch["user"].tolist(), batch["neg"].tolist()):
                assert j not in set(train.row(u).tolist())
            seen += len(batch["user"])
            loss = m.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.after_step()
            total += float(loss.detach()) * len(batch["user"])
        assert seen == len(train.items)
        epoch_means.append(total / seen)
    assert epoch_means[-1] < 0.7 * epoch_means[0], epoch_means[::10]


def test_student_only_user_tables_are_per_user():
    for name in NAMES:
        m = _student(name, n_users=1000, n_items=50)
        per_user = {n for n, p in m.named_parameters() if p.shape[0] == 1000}
        assert per_user == set(m.user_tables)
        assert count_parameters(m) > 0


@pytest.mark.parametrize("name", NAMES)
def test_student_exported_vectors_are_snapshots_not_live_views(name):
    """The best epoch's vectors are kept while training goes on: they must not change with the weights."""
    model = STUDENTS[name](7, 9, StudentConfig(dim=4))
    users, items, _ = model.embeddings()
    u0, i0 = users.copy(), items.copy()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert np.array_equal(users, u0) and np.array_equal(items, i0)
