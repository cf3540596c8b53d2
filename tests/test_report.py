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
