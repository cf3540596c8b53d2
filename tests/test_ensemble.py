"""The ensemble reference against a plain per-user implementation of g and of the metrics."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml
from test_teachers_run import brute_force_metrics, copy_run, read_lists, tiny_config, user_lists

from hetcomp_dist import storage
from hetcomp_dist.config import KnowledgeConfig, to_dict
from hetcomp_dist.errors import InputError
from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.teachers.runner import run_teacher

NAMES = ("mf", "ml", "ae")


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory, synth_run):
    run = copy_run(synth_run, tmp_path_factory.mktemp("ens") / "run")
    cfg = tiny_config(run, names=NAMES)
    for name in NAMES:  # in-process: the ensemble needs trajectories, not actors
        run_teacher(run, cfg, name)
    return run, cfg


def reference_ensemble(
    lists_per_teacher: list[list[list[int]]], temperature: float, weights=None
) -> list[list[int]]:
    """Per user: E(i) = sum_x w_x exp(-rank_x(i) / T); items by E descending, ties by smaller id."""
    out = []
    M = len(lists_per_teacher)
    w = weights if weights is not None else [1.0] * M
    for u in range(len(lists_per_teacher[0])):
        e: dict[int, float] = {}
        for x in range(M):
            for r, i in enumerate(lists_per_teacher[x][u]):
                e[i] = e.get(i, 0.0) + w[x] * math.exp(-r / temperature)
        out.append(sorted(e, key=lambda i: (-e[i], i)))
    return out


@pytest.mark.parametrize("weights", [(), (1.0, 0.5, 2.0)])
def test_ensemble_matches_per_user_reference(run_cfg, weights):
    run, cfg = run_cfg
    cfg = dataclasses.replace(cfg, knowledge=KnowledgeConfig(weights=weights))
    report = ensemble_report(run, cfg)
    layout = RunLayout(run)
    data = storage.read_manifest(layout.data)
    per_teacher = [read_lists(layout.teacher_state(n, 4), data["n_users"], data["shard_size"]) for n in NAMES]
    g = reference_ensemble(per_teacher, cfg.knowledge.temperature, list(weights) or None)
    valid, test = user_lists(run, "valid"), user_lists(run, "test")
    want_valid = brute_force_metrics(
        [[i for i in row if i not in test[u]][:50] for u, row in enumerate(g)], valid
    )
    want_test = brute_force_metrics(
        [[i for i in row if i not in valid[u]][:50] for u, row in enumerate(g)], test
    )
    for key in ("R@10", "N@10", "R@50", "N@50"):
        assert report["ensemble"]["valid"][key] == pytest.approx(want_valid[key], abs=1e-9)
        assert report["ensemble"]["test"][key] == pytest.approx(want_test[key], abs=1e-9)
    for n in NAMES:
        metrics = storage.read_json(layout.teacher_metrics(n))
        assert report["teachers"][n]["test"] == {
            k: metrics["states"][3]["test"][k] for k in ("R@10", "N@10", "R@50", "N@50")
        }


def test_ensemble_cli_json(run_cfg, tmp_path, capsys):
    from hetcomp_dist.cli.main import main

    run, cfg = run_cfg
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg)))))
    assert main(["ensemble", "--run", run, "--config", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"teachers", "ensemble"}
    assert set(out["teachers"]) == set(NAMES)
    for block in list(out["teachers"].values()) + [out["ensemble"]]:
        assert set(block) == {"valid", "test"}
        assert set(block["test"]) == {"R@10", "N@10", "R@50", "N@50"}
    # a teacher that was never trained: a clear error, not a crash
    assert main(["ensemble", "--run", run, "--config", str(path), "--teachers", "mf,ml,gnn", "--json"]) == 2
    assert "gnn" in capsys.readouterr().err


def test_ensemble_needs_committed_teachers(tmp_path, synth_run):
    run = copy_run(synth_run, tmp_path / "run")
    with pytest.raises(InputError, match="no committed teacher"):
        ensemble_report(run, tiny_config(run, names=("mf",)))
