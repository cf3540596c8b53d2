"""Progress lines: the logging module, --log-level, an ETA where the total is known."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hetcomp_dist import progress
from hetcomp_dist.cli import main as cli


@pytest.fixture
def info_level():
    yield
    progress.set_level("INFO")


def test_rate_and_eta_when_the_total_is_known(capsys, info_level, monkeypatch):
    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    p = progress.Progress("stage", total=4000, unit="users", every_s=5.0)
    p.update(1000)  # at 10 s: 100 users/s, 3,000 left -> 30 s
    p.close()  # at 20 s: final line, no ETA
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[stage] 1,000/4,000 users (100 users/s, 10.0s, ETA 0m30s)")
    assert lines[1].startswith("[stage] 1,000/4,000 users (50 users/s, 20.0s)") and "ETA" not in lines[1]


def test_log_level_silences_progress(tmp_path, capsys, info_level):
    args = ["synth", "--users", "60", "--items", "40", "--run", str(tmp_path / "a")]
    assert cli.main(args) == 0
    assert "[synth]" in capsys.readouterr().err
    assert cli.main([*args[:-1], str(tmp_path / "b"), "--log-level", "WARNING"]) == 0
    assert "[synth]" not in capsys.readouterr().err


def test_version():
    from hetcomp_dist import __version__

    res = subprocess.run(["hetcomp-dist", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"hetcomp-dist {__version__}"
    res = subprocess.run([sys.executable, "-m", "hetcomp_dist", "--version"], capture_output=True, text=True)
    assert res.stdout.strip() == f"hetcomp-dist {__version__}"
