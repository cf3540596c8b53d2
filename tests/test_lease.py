"""One writer per RUN: two real processes on one RUN, stale leases taken over, re-entrancy, heartbeats."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from hetcomp_dist import storage
from hetcomp_dist.config import DataConfig, PipelineConfig, SynthConfig, load_config
from hetcomp_dist.data.dataset import load_manifest
from hetcomp_dist.data.synth import synthesize
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
SMALL = (SynthConfig(users=200, items=100), DataConfig(shard_size=64))

# a synth that stops in its first block until the file argv[2] exists: it holds the lease, has begun
# writing RUN/data, and then commits
SLOW_SYNTH = textwrap.dedent(
    """
    import os, sys, time
    from hetcomp_dist.config import DataConfig, SynthConfig
    from hetcomp_dist.data import synth

    real = synth.generate_block

    def slow(cfg, items, block):
        if block == 0:
            print("writing", flush=True)
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.05)
        return real(cfg, items, block)

    synth.generate_block = slow
    m = synth.synthesize(sys.argv[1], SynthConfig(users=3000, items=500), DataConfig(shard_size=1000))
    print("committed", m["n_users"], flush=True)
    """
)


def _lease(run: str, host: str, pid: int, age_s: float = 0.0) -> dict:
    now = time.time()
    lease = {"host": host, "pid": pid, "token": "theirs", "started": now - age_s, "heartbeat": now - age_s}
    storage.write_json_atomic(RunLayout(run).lease, lease)
    return lease


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


@pytest.mark.parametrize("second", ["synth", "ingest"])
def test_a_second_process_is_refused_while_the_first_commits(tmp_path, second):
    run, go = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_SYNTH, str(run), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert first.stdout.readline().strip() == "writing"  # holds the lease, RUN/data begun
        csv = tmp_path / "in.csv"
        csv.write_text("user,item\n" + "\n".join(f"{u},{i}" for u in range(30) for i in range(6)) + "\n")
        cmd = {
            "synth": ["synth", "--users", "300", "--items", "200"],
            "ingest": ["ingest", "--input", str(csv), "--format", "csv"],
        }[second]
        refused = subprocess.run(
            ["hetcomp-dist", *cmd, "--out", str(run)], capture_output=True, text=True, env=ENV, timeout=300
        )
        assert refused.returncode == 2, refused.stderr
        host = re.escape(socket.gethostname())
        assert re.search(rf"RUN is in use by {host} pid {first.pid} since \d{{4}}-\d\d-\d\d ", refused.stderr)
    finally:
        go.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "committed 3000" in out
    m = load_manifest(str(run))  # the first one's data, complete: every file it lists is there
    data = RunLayout(str(run)).data
    assert m["n_users"] == 3000 and all(storage.exists(storage.join(data, rel)) for rel in m["files"])
    written = {os.path.relpath(os.path.join(d, f), data) for d, _, fs in os.walk(data) for f in fs}
    assert written == set(m["files"]) | {storage.MANIFEST, storage.MARKER}  # nothing of the second's
    assert not os.path.exists(RunLayout(str(run)).lease)  # released at the end


def test_a_live_lease_refuses_at_once_and_nothing_is_written(tmp_path):
    run = str(tmp_path / "run")
    lease = _lease(run, "other-host", 4242, age_s=5)
    with pytest.raises(InputError, match=r"RUN is in use by other-host pid 4242 since \d{4}-") as e:
        synthesize(run, *SMALL)
    assert "lease_timeout_s" in e.value.fix
    assert os.listdir(run) == ["_lease.json"]  # no RUN/data
    assert storage.read_json(RunLayout(run).lease) == lease  # and their lease untouched


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, capsys):
    run = str(tmp_path / "run")
    pid = _dead_pid()
    _lease(run, socket.gethostname(), pid)
    assert synthesize(run, *SMALL)["n_users"] == 200
    err = capsys.readouterr().err
    assert f"taking over the lease of {socket.gethostname()} pid {pid}" in err
    assert f"process {pid} is gone" in err
    assert not os.path.exists(RunLayout(run).lease)


def test_a_holder_without_heartbeat_is_taken_over(tmp_path, capsys):
    run = str(tmp_path / "run")
    _lease(run, "other-host", 4242, age_s=1000)
    synthesize(run, *SMALL)
    assert "no heartbeat for 1000s" in capsys.readouterr().err
    # within the timeout the same lease is live
    _lease(run, "other-host", 4242, age_s=1000)
    with pytest.raises(InputError, match="in use by other-host"):
        with RunLease(run, PipelineConfig(lease_timeout_s=2000)):
            pass


def test_nested_leases_of_one_process_are_one(tmp_path):
    run = str(tmp_path / "run")
    with RunLease(run) as outer:
        token = storage.read_json(outer.path)["token"]
        with RunLease(run):
            synthesize(run, *SMALL)  # a stage function inside the pipeline's lease
        assert storage.read_json(outer.path)["token"] == token  # the inner exits released nothing
        assert storage.read_json(outer.path)["pid"] == os.getpid()
    assert not os.path.exists(outer.path)


def test_the_heartbeat_moves(tmp_path):
    run = str(tmp_path / "run")
    with RunLease(run, PipelineConfig(lease_heartbeat_s=0.05, lease_timeout_s=1.0)) as lease:
        first = storage.read_json(lease.path)["heartbeat"]
        time.sleep(0.5)
        assert storage.read_json(lease.path)["heartbeat"] > first


def test_a_lost_lease_is_left_to_its_new_holder(tmp_path):
    run = str(tmp_path / "run")
    with RunLease(run) as lease:  # no heartbeat within the test (every 10 s)
        theirs = _lease(run, "other-host", 4242)  # taken over by someone who judged us gone
    assert storage.read_json(lease.path) == theirs


def test_a_refused_or_failed_invocation_leaves_no_run_folder(tmp_path):
    from hetcomp_dist.data.ingest import ingest

    run = tmp_path / "run"
    with pytest.raises(InputError, match="file not found"):
        ingest(str(run), DataConfig(input=str(tmp_path / "none.csv"), format="csv"))
    assert not run.exists()


def test_the_pipeline_holds_the_lease_while_its_stages_run(tmp_path, monkeypatch):
    from hetcomp_dist import pipeline

    seen = []
    monkeypatch.setattr(
        pipeline, "ensure_data", lambda cfg: seen.append(storage.read_json(RunLayout(cfg.run).lease))
    )
    cfg = load_config(None, [f"run={tmp_path / 'run'}"])
    pipeline.run_pipeline(cfg, ("data",))
    assert seen[0]["pid"] == os.getpid() and seen[0]["heartbeat_s"] == cfg.pipeline.lease_heartbeat_s
    assert not os.path.exists(RunLayout(cfg.run).lease)


@pytest.mark.parametrize(
    "override, match",
    [
        ("pipeline.lease_heartbeat_s=0", "lease_heartbeat_s"),
        ("pipeline.lease_heartbeat_s=.nan", "lease_heartbeat_s"),
        ("pipeline.lease_timeout_s=.inf", "lease_timeout_s"),
        ("pipeline.lease_timeout_s=20", "lease_timeout_s"),  # below 3 heartbeats of 10 s
    ],
)
def test_lease_settings_are_range_checked(override, match):
    with pytest.raises(InputError, match=match):
        load_config(None, [override])


def test_the_lease_file_is_a_run_layout_path(tmp_path):
    assert RunLayout(str(tmp_path)).lease == f"{tmp_path}/_lease.json"
