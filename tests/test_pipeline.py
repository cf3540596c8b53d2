"""The whole pipeline on tiny synthetic data: every stage, the report, and a resuming rerun."""

import json

import pytest

from hetcomp_dist import storage
from hetcomp_dist.cli.main import main
from hetcomp_dist.cli.run import DEMO_CONFIG
from hetcomp_dist.config import load_config
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.pipeline import run_pipeline

TINY = [
    "synth.users=300",
    "synth.items=200",
    "data.shard_size=128",
    "teachers.max_epochs=10",
    "teachers.eval_every=5",
    "teachers.snapshot_every=5",
    "student.max_epochs=20",
    "student.eval_every=5",
    "student.num_workers=0",
    "pipeline.students=[mf]",
]


@pytest.fixture(scope="module")
def piped(tmp_path_factory, ray_session):
    run = str(tmp_path_factory.mktemp("pipe") / "run")
    # what `hetcomp-dist run` builds on the synthetic data with no --config: the demo's settings + TINY
    cfg = load_config(DEMO_CONFIG, TINY + [f"run={run}"])
    layout = RunLayout(run)
    assert run_pipeline(cfg) == layout.report
    return cfg, layout


def test_report_has_every_row(piped):
    cfg, layout = piped
    rep = json.loads(storage.read_bytes(layout.report_json))
    got = {(r["method"], r["student"], r["split"]) for r in rep["rows"]}
    want = {(m, "-", s) for m in (*cfg.teachers.names, "ensemble") for s in ("valid", "test")}
    want |= {(m, "mf", s) for m in ("hetcomp", "wokd") for s in ("valid", "test")}
    assert got == want
    for r in rep["rows"]:
        assert all(0.0 <= r[k] <= 1.0 for k in ("R@10", "N@10", "R@50", "N@50"))
        assert r["R@10"] <= r["R@50"]
    assert [c["model"].split()[0] for c in rep["cost"]] == ["ensemble", "HetComp"]
    assert rep["cost"][0]["params"] > 10 * rep["cost"][1]["params"]
    assert set(rep["stage_times"]) == {"data", "teachers", "knowledge", "student"}
    md = storage.read_bytes(layout.report_md).decode()
    assert "| HetComp |" in md and "| Student w/o KD |" in md and "Inference cost" in md
    assert storage.read_bytes(layout.curves)[:4] == b"\x89PNG"


def test_rerun_skips_finished_stages_and_keeps_results(piped, capsys):
    cfg, layout = piped
    before = storage.read_json(layout.report_row("hetcomp", "mf"))
    teacher_manifest = storage.read_manifest(layout.teacher("mf"))
    rc = main(["run", "--out", cfg.run, *TINY])
    assert rc == 0
    err = capsys.readouterr().err
    assert "up to date" in err or "skipping" in err
    assert storage.read_json(layout.report_row("hetcomp", "mf")) == before
    assert storage.read_manifest(layout.teacher("mf")) == teacher_manifest


def test_bad_cli_input_is_a_clear_error(tmp_path, capsys):
    assert (
        main(["run", "--out", str(tmp_path / "r"), "--input", str(tmp_path / "nope.csv"), "--format", "csv"])
        == 2
    )
    err = capsys.readouterr().err
    assert "nope.csv" in err
    assert not storage.exists(RunLayout(str(tmp_path / "r")).data)
    assert main(["run", "--out", str(tmp_path / "r"), "student.modl=mf"]) == 2
    assert "config.student.modl: unknown key" in capsys.readouterr().err


def test_saved_student_embeddings_reproduce_its_report_row(piped):
    """emb.npz is the selected (best-validation) student: evaluating it gives the reported metrics."""
    from hetcomp_dist.evaluation.evaluate import evaluate_embeddings

    cfg, layout = piped
    row = storage.read_json(layout.report_row("hetcomp", "mf"))
    emb = storage.read_npz(layout.student_embeddings(layout.student("hetcomp", "mf")))
    got = evaluate_embeddings(cfg.run, emb["user"], emb["item"], "ip", cfg.eval)
    for split in ("valid", "test"):
        for k in ("R@10", "N@10", "R@50", "N@50"):
            assert got[split][k] == pytest.approx(row[split][k], abs=1e-9), (split, k)


def test_stage_times_of_an_invocation_without_the_report_stage_are_kept(piped):
    """`--stages data,teachers` writes no report; its wall times must still reach the next report."""
    cfg, layout = piped
    meta = layout.report_meta
    before = storage.read_json(meta)["stage_times"]
    run_pipeline(cfg, ("data", "teachers"))  # both up to date: quick, but timed
    after = storage.read_json(meta)["stage_times"]
    assert after["data"] > before["data"] and after["teachers"] > before["teachers"]
    assert after["knowledge"] == before["knowledge"] and after["student"] == before["student"]
    run_pipeline(cfg, ("report",))
    rep = json.loads(storage.read_bytes(layout.report_json))
    assert rep["stage_times"] == pytest.approx(after)
    assert set(rep["stage_times"]) == {"data", "teachers", "knowledge", "student"}


def test_every_stage_records_its_config_and_environment(piped):
    """Beside every committed stage: config.yaml (the resolved config), and in its manifest the
    environment that produced it (library versions, threads, CPU instruction set)."""
    import importlib.metadata

    import yaml

    from hetcomp_dist.config import from_dict, to_dict

    cfg, layout = piped
    student = layout.student("hetcomp", "mf")
    stages = [layout.data, layout.teachers, *(layout.teacher(n) for n in cfg.teachers.names), layout.round(0)]
    stages += [student, layout.round(1, layout.student_rounds(student))]
    for folder in stages:
        saved = yaml.safe_load(storage.read_bytes(storage.config_path(folder)))
        assert to_dict(from_dict(type(cfg), saved)) == to_dict(cfg), folder
        env = storage.read_manifest(folder)["environment"]
        assert env["libraries"]["numpy"] == importlib.metadata.version("numpy"), folder
        assert env["python"] and env["cpu"] and "threads" in env
    env = storage.read_manifest(student)["environment"]
    assert env["threads"]["torch"] >= 1 and env["torch_cpu_capability"] and env["device"] == "cpu"


def test_report_has_the_als_baseline_beside_the_student(piped, capsys):
    """The report stage adds ALS at the student's and the teachers' dimension to the student's table; a
    rerun of the report reuses them."""
    cfg, layout = piped
    rep = json.loads(storage.read_bytes(layout.report_json))
    rows = rep["als_baseline"]
    assert [r["dim"] for r in rows] == [cfg.student.dim, cfg.teachers.dim]
    for r in rows:
        assert (r["alpha"], r["reg"]) in {(a, g) for a in cfg.report.als_alphas for g in cfg.report.als_regs}
        assert 0 < r["iterations"] <= cfg.report.als_iterations and r["wall_s"] > 0
        assert 0.0 < r["test"]["R@50"] <= 1.0
    md = storage.read_bytes(layout.report_md).decode()
    table = md.split("## Student: MF")[1].split("\n\n")[1]
    assert f"| ALS d={cfg.student.dim} (" in table and f"| ALS d={cfg.teachers.dim} (" in table
    run_pipeline(cfg, ("report",))
    assert "ALS baseline is up to date" in capsys.readouterr().err
    assert json.loads(storage.read_bytes(layout.report_json))["als_baseline"] == rows
