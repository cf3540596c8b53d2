"""The dimension-6 students one by one: scores by their definitions, base losses, ML's unit ball, the
residual DNN. What every student promises the objectives (factorised form, triples, per-user tables,
embeddings) is checked once for all in tests/test_model_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional

from hetcomp_dist.config import StudentConfig
from hetcomp_dist.models.registry import build_student

CFG = StudentConfig()


# one intra-op torch thread per test (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("_one_torch_thread")


def _model(name, n_users=30, n_items=50, seed=0):
    torch.manual_seed(seed)
    return build_student(name, n_users, n_items, CFG)


def test_scores_follow_the_definitions():
    users = torch.tensor([0, 3, 7])
    mf = _model("mf")
    want = torch.stack(
        [torch.stack([mf.user_emb.weight[u] @ mf.item_emb.weight[i] for i in range(50)]) for u in users]
    )
    torch.testing.assert_close(mf.scores(users), want)
    ml = _model("ml")
    want = torch.stack(
        [
            torch.stack([-((ml.user_emb.weight[u] - ml.item_emb.weight[i]) ** 2).sum() for i in range(50)])
            for u in users
        ]
    )
    torch.testing.assert_close(ml.scores(users), want, rtol=1e-5, atol=1e-5)
    dnn = _model("dnn")
    assert CFG.dnn_residual  # the default: each tower adds its input back
    f = dnn.user_emb.weight[users] + dnn.user_tower(dnn.user_emb.weight[users])
    g = dnn.item_emb.weight + dnn.item_tower(dnn.item_emb.weight)
    torch.testing.assert_close(dnn.scores(users), f @ g.T)
    assert f.shape[1] == CFG.dim  # the DNN's retrieval vectors are dimension 6 too


def test_base_losses():
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6]), torch.tensor([7, 8, 9])
    mf = _model("mf")
    p, qi, qj = mf.user_emb.weight[users], mf.item_emb.weight[pos], mf.item_emb.weight[neg]
    torch.testing.assert_close(
        mf.base_loss(users, pos, neg), -functional.logsigmoid((p * qi).sum(1) - (p * qj).sum(1))
    )
    ml = _model("ml")
    p, qi, qj = ml.user_emb.weight[users], ml.item_emb.weight[pos], ml.item_emb.weight[neg]
    hinge = torch.relu(1.0 + ((p - qi) ** 2).sum(1) - ((p - qj) ** 2).sum(1))
    torch.testing.assert_close(ml.base_loss(users, pos, neg), hinge)
    dnn = _model("dnn")
    s = dnn.scores(users)
    torch.testing.assert_close(
        dnn.base_loss(users, pos, neg), -functional.logsigmoid(s[[0, 1, 2], pos] - s[[0, 1, 2], neg])
    )


def test_ml_rows_stay_in_the_ball():
    ml = _model("ml")
    with torch.no_grad():
        ml.user_emb.weight.mul_(10)
    ml.after_step()
    assert float(ml.user_emb.weight.detach().norm(dim=1).max()) <= CFG.ml_max_norm + 1e-5
    assert float(ml.item_emb.weight.detach().norm(dim=1).max()) <= CFG.ml_max_norm + 1e-5


@pytest.mark.parametrize("method", ["hetcomp", "wokd", "rd", "rrd", "mtd", "cldrd", "dcd"])
def test_ml_clip_goes_with_cmls_hinge(method):
    """CML's unit-ball clip applies where the objective trains the hinge (w/o KD, baselines), not in
    HetComp."""
    from hetcomp_dist.config import Config
    from hetcomp_dist.objectives.registry import METHODS, model_config

    cfg = Config(student=StudentConfig(model="ml", method=method))
    torch.manual_seed(0)
    ml = build_student("ml", 30, 50, model_config(cfg))
    with torch.no_grad():
        ml.user_emb.weight.mul_(10)
        ml.item_emb.weight.mul_(10)
    ml.after_step()
    longest = max(float(w.detach().norm(dim=1).max()) for w in (ml.user_emb.weight, ml.item_emb.weight))
    trains_hinge = method != "hetcomp"
    assert METHODS[method].needs_negatives == trains_hinge
    assert (longest <= CFG.ml_max_norm + 1e-5) == trains_hinge, longest
    # the other students' settings are untouched
    mf = Config(student=StudentConfig(model="mf", method=method))
    assert model_config(mf) == mf.student


def test_residual_dnn_towers_start_from_mf():
    """With the towers' last layers zeroed, a residual DNN scores like MF on its id tables; a plain one
    scores 0."""
    import dataclasses

    for residual in (True, False):
        torch.manual_seed(0)
        m = build_student("dnn", 30, 50, dataclasses.replace(CFG, dnn_residual=residual))
        with torch.no_grad():
            for tower in (m.user_tower, m.item_tower):
                tower[-1].weight.zero_()
                tower[-1].bias.zero_()
        users = torch.arange(30)
        want = m.user_emb.weight @ m.item_emb.weight.T if residual else torch.zeros(30, 50)
        torch.testing.assert_close(m.scores(users), want)
        u, i, _ = m.embeddings()
        np.testing.assert_allclose(u @ i.T, want.detach().numpy(), atol=1e-6)
