"""A new user's first commands, typed as the README shows them: relative paths, the installed CLI entry
point and the job file, each run as its own process from a fresh working directory (its own local Ray).

Ray Train workers, teacher actors and Ray Data tasks run in working directories of their own, so a
relative RUN that reaches them unresolved fails (or writes elsewhere); these tests fail on such code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hetcomp_dist.cli.jobs import SMOKE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    print(res.stdout[-4000:], res.stderr[-6000:])  # shown when an assertion fails
    return res


def test_readme_first_command_with_a_relative_out(tmp_path):
    exe = shutil.which("hetcomp-dist")
    assert exe, "the package's console script is installed (pip install -e .)"
    res = _run(["hetcomp-dist", "run", "--out", "runs/demo", *SMOKE], cwd=tmp_path)
    assert res.returncode == 0
    report = tmp_path / "runs" / "demo" / "report" / "report.md"
    assert report.exists() and "| HetComp |" in report.read_text()
    assert f"report: {tmp_path}/runs/demo/report/report.md" in res.stdout


def test_smoke_job_with_a_relative_out(tmp_path):
    res = _run(
        [sys.executable, str(REPO / "jobs" / "pipeline.py"), "--smoke", "--out", "runs/x"], cwd=tmp_path
    )
    assert res.returncode == 0
    assert (tmp_path / "runs" / "x" / "report" / "report.md").exists()
    # each progress line once: Ray Train's patched print and root logger must not echo it a second time
    epochs = [
        line[line.index("[student] epoch") :] for line in res.stderr.splitlines() if "[student] epoch" in line
    ]
    assert epochs and len(epochs) == len(set(epochs))
    assert res.stdout.rstrip().splitlines()[-1] == f"output: {tmp_path}/runs/x/report/report.json"
