"""jobs/bench_recommend.py end to end on a small catalogue: both paths run, their outputs are compared
(the bench exits non-zero when they differ) and the one JSON line has the issue's keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_small_bench_runs_both_paths_and_prints_its_json_line(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    res = subprocess.run(
        [sys.executable, "jobs/bench_recommend.py", "--workdir", str(tmp_path / "w"), "--users", "3000",
         "--items", "400", "--k", "20"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["users_per_s_inprocess"] > 0 and line["users_per_s_ray"] > 0
    assert 0 < line["peak_rss_gib"] < 4
    assert line["users"] == 3000 and line["k"] == 20
