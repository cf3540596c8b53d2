"""The report: rows round-trip into report.json, the markdown table carries our and the paper's numbers."""

import json

import pytest

from hetcomp_dist import storage
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.report import report


def _metrics(base: float) -> dict:
    return {s: {"R@10": base, "N@10": base / 2, "R@50": base * 2, "N@50": base} for s in ("valid", "test")}


@pytest.fixture
def run(tmp_path):
    run = str(tmp_path / "run")
    storage.write_manifest(RunLayout(run).data, {"n_users": 3, "source": {"format": "citeulike"}})
    return run


def test_rows_and_markdown(run):
    report.add_result(run, "mf", "-", _metrics(0.10))
    report.add_result(run, "vae", "-", _metrics(0.12))
    report.add_result(run, "ensemble", "-", _metrics(0.15))
    report.add_result(run, "wokd", "mf", _metrics(0.05))
    report.add_result(run, "dcd", "mf", _metrics(0.08))
    report.add_result(run, "hetcomp", "mf", _metrics(0.125))
    rdir = report.write_report(
        run,
        teachers=["mf", "vae"],
        stage_times={"data": 1.0, "student": 2.5},
        cost=[{"model": "student", "params": 100, "wall_s": 0.5, "users_per_s": 2000.0}],
    )
    layout = RunLayout(run)
    assert rdir == layout.report
    data = json.loads(storage.read_bytes(layout.report_json))
    rows = {(r["method"], r["student"], r["split"]): r for r in data["rows"]}
    assert len(rows) == 12
    assert rows[("hetcomp", "mf", "test")]["R@50"] == pytest.approx(0.25)
    assert set(rows[("mf", "-", "valid")]) == {"method", "student", "split", "R@10", "N@10", "R@50", "N@50"}
    md = storage.read_bytes(layout.report_md).decode()
    # our HetComp row with the paper's value beside it
    het = next(line for line in md.splitlines() if line.startswith("| HetComp |"))
    assert "0.1250" in het and "0.2500" in het and "0.2814" in het
    # best teacher picked on validation (vae), improvement over the best baseline (DCD): 0.25 / 0.16 - 1
    assert "Best single teacher (vae)" in md
    assert "R@50 +56.2%" in md
    assert "| total | 3.5 |" in md


def test_rerun_replaces_a_result(run):
    report.add_result(run, "hetcomp", "mf", _metrics(0.1))
    report.add_result(run, "hetcomp", "mf", _metrics(0.2))
    assert [r["test"]["R@10"] for r in report.load_results(run)] == [0.2]


def test_curves_png(run):
    layout = RunLayout(run)
    d = layout.student("hetcomp", "mf")
    lines = [
        {"epoch": e, "loss": 1.0, "valid": {"R@50": 0.1 + e / 100}, "means": {"mf": min(e / 10, 3)}}
        for e in (10, 20, 30)
    ]
    storage.write_bytes_atomic(layout.student_metrics(d), "\n".join(json.dumps(x) for x in lines).encode())
    assert report.plot_curves(run, layout.curves)
    assert storage.read_bytes(layout.curves)[:8] == b"\x89PNG\r\n\x1a\n"


def _als_row(dim: int, base: float) -> dict:
    return {
        "model": "ALS",
        "dim": dim,
        "alpha": 10.0,
        "reg": 3.0,
        "iterations": 15,
        "params": 1000 * dim,
        "train_s": 1.5,
        "wall_s": 2.25,
        "search_s": 20.0,
        **_metrics(base),
        "grid": [{"alpha": 10.0, "reg": 3.0, "iterations": 15, "valid_R@50": base * 2}],
    }


def test_als_rows_sit_in_every_student_table(run):
    report.add_result(run, "ensemble", "-", _metrics(0.15))
    for student in ("mf", "ml"):
        report.add_result(run, "hetcomp", student, _metrics(0.125), {"wall_s": 300.0, "n_params": 6000})
    als = {"config_hash": "h", "rows": [_als_row(6, 0.07), _als_row(64, 0.16)]}
    layout = RunLayout(run)
    for given in (als, None):  # a later report without the baseline keeps the stored rows
        report.write_report(run, ["mf"], als=given)
        md = storage.read_bytes(layout.report_md).decode()
        lines = md.splitlines()
        for student in ("MF", "ML"):
            start = lines.index(f"## Student: {student} (dimension 6)")
            table = lines[start : lines.index("", start + 2)]
            assert table[2].endswith("params | train (s) |")
            het = next(line for line in table if line.startswith("| HetComp |"))
            assert het.endswith("| 6,000 | 300.0 |")
            als6 = next(line for line in table if line.startswith("| ALS d=6 (α=10, λ=3, 15 it.) |"))
            assert "0.1400" in als6 and als6.endswith("| 6,000 | 2.2 |")
            assert any(line.startswith("| ALS d=64 ") and "| 64,000 |" in line for line in table)
        data = json.loads(storage.read_bytes(layout.report_json))
        assert [r["dim"] for r in data["als_baseline"]] == [6, 64]
        assert {r["method"] for r in data["rows"]} == {"ensemble", "hetcomp"}  # results only, as before


def test_als_rows_without_students(run):
    report.add_result(run, "ensemble", "-", _metrics(0.15))
    report.write_report(run, [], als={"config_hash": "h", "rows": [_als_row(6, 0.07)]})
    md = storage.read_bytes(RunLayout(run).report_md).decode()
    assert "## Ensemble and the small-model baseline" in md
    assert "| ALS d=6 (α=10, λ=3, 15 it.) |" in md


def test_als_baseline_picks_on_validation_and_is_reused(synth_run, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    import numpy as np
    import torch

    from hetcomp_dist.config import load_config
    from hetcomp_dist.data.dataset import load_split
    from hetcomp_dist.evaluation.evaluate import evaluate_embeddings
    from hetcomp_dist.models.als import ALS
    from hetcomp_dist.report import als_baseline

    run = str(tmp_path / "run")
    shutil.copytree(RunLayout(synth_run).data, RunLayout(run).data)
    grid = ["report.als_alphas=[10, 40]", "report.als_regs=[1, 30]", "report.als_iterations=6"]
    cfg = load_config(None, [*grid, "report.als_eval_every=2", "student.dim=4", "teachers.dim=8"], run=run)
    rows = als_baseline.als_rows(run, cfg)
    assert [r["dim"] for r in rows] == [4, 8]
    train = load_split(run, "train")
    for r in rows:
        assert len(r["grid"]) == 4 and r["valid"]["R@50"] == max(g["valid_R@50"] for g in r["grid"])
        assert r["iterations"] in (2, 4, 6) and 0 < r["train_s"] <= r["wall_s"] <= r["search_s"]
        assert r["params"] == (train.n + 300) * r["dim"]
        # the chosen setting, retrained alone for its iterations, is the row's model
        torch.manual_seed(cfg.teachers.seed)
        tcfg = dataclasses.replace(cfg.teachers, dim=r["dim"], als_alpha=r["alpha"], als_reg=r["reg"])
        model = ALS(train.n, 300, tcfg)
        for _ in range(r["iterations"]):
            model.fit_epoch(train, np.random.default_rng(0), 256, None)
        user, item, _ = model.embeddings()
        again = evaluate_embeddings(run, user, item, "ip", cfg.eval)
        assert again["test"] == pytest.approx(r["test"]) and again["valid"] == pytest.approx(r["valid"])
    stored = {"config_hash": als_baseline.als_hash(run, cfg), "rows": rows}
    storage.write_json_atomic(RunLayout(run).report_meta, {"als_baseline": stored})
    monkeypatch.setattr(als_baseline, "als_rows", lambda *a: pytest.fail("recomputed"))
    assert als_baseline.als_baseline(run, cfg)["rows"] == json.loads(json.dumps(rows))
    other = load_config(None, [*grid, "report.als_iterations=4"], run=run)
    assert als_baseline.als_hash(run, other) != stored["config_hash"]
