"""Teacher selection on validation: leave-one-out, backward elimination and weights, on a run where
one teacher knows the validation items, one ranks at random and the others are the synthetic ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from hetcomp_dist import storage
from hetcomp_dist.config import Config, from_dict
from hetcomp_dist.data.dataset import load_manifest, load_split
from hetcomp_dist.data.synth import synthesize
from hetcomp_dist.knowledge.selection import select
from hetcomp_dist.knowledge.teacher_ensemble import ensemble_metrics
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.testing.trajectories import write_trajectories


def _cfg(run: str, **knowledge) -> Config:
    return from_dict(
        Config,
        {
            "run": run,
            "data": {"shard_size": 64},
            "synth": {"users": 200, "items": 150, "mean_interactions": 12, "max_interactions": 40},
            "teachers": {"names": ["mf", "ml", "dnn"]},
            "knowledge": knowledge,
        },
    )


def _rewrite_e4(run: str, name: str, lists_of) -> None:
    """Replaces teacher `name`'s E4 lists: lists_of(user) -> its unobserved items, best first."""
    m = load_manifest(run)
    folder = RunLayout(run).teacher_state(name, 4)
    for s, lo, hi in storage.iter_shards("", m["n_users"], m["shard_size"]):
        rows = [lists_of(u) for u in range(lo, hi)]
        items = pa.array(rows, pa.list_(pa.int32()))
        storage.write_table_atomic(storage.shard_path(folder, s), storage.user_table(lo, hi, items=items))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("sel") / "run")
    cfg = _cfg(run)
    synthesize(run, cfg.synth, cfg.data)
    write_trajectories(run, cfg, seed=1)
    m = load_manifest(run)
    train, valid = load_split(run, "train"), load_split(run, "valid")
    rng = np.random.default_rng(0)
    K = cfg.teachers.topk

    def unobserved(u):
        seen = set(train.row(u).tolist())
        return [i for i in range(m["n_items"]) if i not in seen]

    def oracle(u):  # the validation items at ranks 20-59 (an informative teacher, not a perfect one)
        rest = unobserved(u)
        hits = [i for i in valid.row(u).tolist() if i in set(rest)]
        others = [i for i in rng.permutation(rest).tolist() if i not in set(hits)]
        out = others[:20] + hits + others[20:]
        return out[:K]

    _rewrite_e4(run, "mf", oracle)
    _rewrite_e4(run, "dnn", lambda u: rng.permutation(unobserved(u))[:K].tolist())
    return run, cfg


def test_leave_one_out_and_elimination(run):
    run, cfg = run
    out = select(run, cfg, tune_weights=False)
    for name, names in (("mf", ["ml", "dnn"]), ("ml", ["mf", "dnn"]), ("dnn", ["mf", "ml"])):
        ref = ensemble_metrics(run, cfg, names, None, ("valid",))["valid"]["R@50"]
        assert out["leave_one_out"][name] == pytest.approx(ref)
    assert out["full"] == pytest.approx(ensemble_metrics(run, cfg, ["mf", "ml", "dnn"])["valid"]["R@50"])
    assert out["leave_one_out"]["mf"] < out["full"], "the oracle teacher earns its place"
    assert "dnn" in out["dropped"] and "mf" in out["kept"]
    assert out["valid_R@50"] >= out["full"]


def test_weights_only_raise_valid_recall(run):
    run, cfg = run
    plain = select(run, cfg, tune_weights=False)
    tuned = select(run, cfg, tune_weights=True, grid=(0.5, 1.0, 2.0), temperatures=(5.0, 20.0))
    assert tuned["kept"] == plain["kept"] and tuned["valid_R@50"] >= plain["valid_R@50"]
    cfg = dataclasses.replace(
        cfg, knowledge=dataclasses.replace(cfg.knowledge, temperature=tuned["temperature"])
    )
    names, w = tuned["kept"], tuned["weights"]
    assert ensemble_metrics(run, cfg, names, tuple(w), ("valid",))["valid"]["R@50"] == pytest.approx(
        tuned["valid_R@50"]
    )
