"""The fault drill's command on its cheapest fault, as a user types it (the whole drill,
``python jobs/drill_faults.py``, takes 20 minutes and more: it is a job, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# one teacher, the student in the driver (no Train worker group): the smallest run with every stage
TINY = ["teachers.names=[mf]", "student.num_workers=0"]


def test_drill_survives_a_write_that_fails_mid_shard():
    out = subprocess.run(
        [sys.executable, "jobs/drill_faults.py", "--faults", "write_local", *TINY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])  # the one JSON line
    assert out.returncode == 0, (summary.get("work"), out.stderr[-3000:])
    assert summary["faults_tried"] == summary["faults_survived"] == 1
    assert summary["rows_equal"] and summary["leftovers"] == []
    fault = summary["faults"]["write_local"]
    assert fault["details"]["first_rc"] == 1 and fault["rc"] == 0
    assert fault["checks"] == {
        "the disturbed run failed with the injected error": True,
        "the failed write left no temporary file": True,
    }
    assert "work" not in summary  # a drill that passed removes its runs and logs
