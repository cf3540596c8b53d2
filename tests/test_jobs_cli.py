"""The shared job command line (hetcomp_dist/cli/jobs.py), the job files' bootstrap, and the local
recipe's path handling -- without starting Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hetcomp_dist.cli import jobs
from hetcomp_dist.config import Config
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.local_cluster import absolute_paths
from hetcomp_dist.resources import ClusterView, NodeGroup

REPO = Path(__file__).resolve().parents[1]
# every job file but the benchmarks (bench_*) and the checks of an existing run (check_*) is a stage
# entrypoint
# the stage jobs (benchmarks, checks and the fault drill are tools with options of their own)
JOBS = sorted(
    p.stem for p in (REPO / "jobs").glob("*.py") if not p.stem.startswith(("bench_", "check_", "drill_"))
)


def _cfg(*argv: str) -> Config:
    return jobs.config_from_args(jobs.parser("test").parse_args(list(argv)))


def test_smoke_preset_then_overrides_then_out():
    from hetcomp_dist.cli.run import DEMO_CONFIG
    from hetcomp_dist.config import load_config

    default = _cfg()  # the synthetic dataset without --config: the demo's settings
    assert default == load_config(DEMO_CONFIG) and default.run == os.path.abspath(Config().run)
    assert default.teachers.max_epochs < Config().teachers.max_epochs
    real = _cfg("--input", "s3://b/users.dat", "--format", "citeulike")  # real data: the paper's defaults
    assert real.teachers == Config().teachers and real.student == Config().student
    smoke = _cfg("--smoke")
    assert (smoke.data.format, smoke.synth.users, smoke.pipeline.students) == ("synthetic", 160, ("mf",))
    assert _cfg("--smoke", "synth.users=200").synth.users == 200  # the user's override wins
    # --out is never parsed as YAML (a path is not a number or null); a local one is made absolute here
    assert _cfg("--out", "123").run == os.path.abspath("123") and _cfg(
        "--out", "null"
    ).run == os.path.abspath("null")
    cfg = _cfg("--input", "s3://b/users.dat", "--format", "citeulike", "--out", "s3://b/run")
    assert (cfg.data.input, cfg.data.format, cfg.run) == ("s3://b/users.dat", "citeulike", "s3://b/run")
    with pytest.raises(InputError, match="student.nope"):
        _cfg("student.nope=1")


def test_a_relative_run_is_refused_inside_a_submitted_job(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _cfg("--out", "runs/x").run == str(tmp_path / "runs/x")  # fine from a shell: made absolute
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a submitted job
    with pytest.raises(InputError, match="relative output path"):
        _cfg("--out", "runs/x")
    with pytest.raises(InputError, match="relative output path"):
        _cfg("run=runs/x")  # the config's own run, too
    assert _cfg("--out", str(tmp_path)).run == str(tmp_path)
    assert _cfg("--out", "s3://bucket/run").run == "s3://bucket/run"


@pytest.fixture
def no_ray(monkeypatch):
    calls = []
    monkeypatch.setattr(jobs, "init_ray", lambda: calls.append("init"))
    monkeypatch.setattr(jobs, "check_cluster", lambda cfg: None)  # a one-node cluster
    monkeypatch.setattr(jobs, "shutdown_ray", lambda: calls.append("shutdown"))
    return calls


@pytest.mark.parametrize(
    "view, out, refused",
    [
        (ClusterView(2, {"CPU": 2}), "local", True),
        (ClusterView(1, {"CPU": 0}, (NodeGroup("cpu", {"CPU": 16}, 4),)), "local", True),  # may grow
        (ClusterView(2, {"CPU": 2}), "s3://bucket/run", False),
        (ClusterView(1, {"CPU": 2}), "local", False),
    ],
)
def test_a_local_run_on_a_cluster_of_several_nodes_is_refused_before_the_stage(
    monkeypatch, capsys, tmp_path, view, out, refused
):
    from hetcomp_dist import resources

    monkeypatch.setattr(jobs, "init_ray", lambda: None)
    monkeypatch.setattr(jobs, "shutdown_ray", lambda: None)
    monkeypatch.setattr(resources, "cluster_view", lambda: view)
    ran = []
    run = str(tmp_path / "run") if out == "local" else out
    status = jobs.run_job(lambda cfg, args: ran.append(cfg.run) or "done", "test", ["--out", run])
    assert (status, ran) == ((2, []) if refused else (0, [run]))
    if refused:
        last = capsys.readouterr().err.splitlines()[-1]
        assert last.startswith(f"error: --out {run}: a local RUN on ") and "s3://" in last
        assert not os.path.exists(run), "refused before anything is written"


@pytest.mark.parametrize(
    "raised, status",
    [(None, 0), (InputError("x.csv", "file not found", "fix it"), 2), (RuntimeError("boom"), 1)],
)
def test_run_job_exit_status_and_last_line(no_ray, capsys, raised, status):
    def stage(cfg, args):
        print("working")
        if raised is not None:
            raise raised
        return RunLayout(cfg.run).report

    assert jobs.run_job(stage, "test", ["--out", "/tmp/r"]) == status
    out, err = capsys.readouterr()
    assert no_ray == ["init", "shutdown"], "joins Ray, and disconnects before the last line"
    if status == 0:
        assert out.splitlines()[-1] == "output: /tmp/r/report"
    else:
        last = err.splitlines()[-1]
        assert last == (
            "error: x.csv: file not found -- fix it" if status == 2 else "error: RuntimeError: boom"
        )
        assert ("Traceback" in err) == (status == 1)  # a bug gets its traceback; bad input only the reason


def test_bad_config_fails_before_ray_starts(no_ray, capsys):
    assert jobs.run_job(lambda cfg, args: "never", "test", ["teachers.num_cpus=abc"]) == 2
    assert no_ray == ["shutdown"]
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: config.teachers.num_cpus")


@pytest.mark.parametrize("job", JOBS)
def test_job_files_run_from_any_directory_without_install(job, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "--smoke" in res.stdout and "--out RUN" in res.stdout
    assert f"jobs/{job}.py" in res.stdout, "the docstring shows how to run and submit it"


def test_local_recipe_makes_job_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [
        "--smoke",
        "--out",
        "runs/x",
        "--input=data/i.csv",
        "--config",
        "s3://b/c.yaml",
        "--format",
        "csv",
        "student.model=ml",
    ]
    assert absolute_paths(argv) == [
        "--smoke",
        "--out",
        str(tmp_path / "runs/x"),
        f"--input={tmp_path}/data/i.csv",
        "--config",
        "s3://b/c.yaml",
        "--format",
        "csv",
        "student.model=ml",
    ]
