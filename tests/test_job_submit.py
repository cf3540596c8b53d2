"""The real job path: a private local Ray head (`ray start --head` on free ports, own temp dir and process
group) and blocking `ray job submit --working-dir .` of jobs/pipeline.py, then only that cluster is stopped
(its process group is signalled; never `ray stop`). Here a job with bad input fails with its reason; the
successful smoke pipeline job runs in test_two_nodes (checked by `check_smoke_report`)."""

from __future__ import annotations

import math
import os
import re
import subprocess

import pytest

from hetcomp_dist.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

SUBMIT_TIMEOUT_S = 480


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(
        ["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if line.split()[0] == str(pgid) and not line.split()[1].startswith("Z")
    ]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(num_cpus=4).start()  # CPUs are scheduling tokens: 6 teacher actors + Train on 2 cores
    pgid, temp_dir = c.proc.pid, c.temp_dir
    assert _group_members(pgid), "the head runs in its own process group"
    try:
        yield c
    finally:
        c.stop()
    # only this cluster, and all of it, is gone
    assert _group_members(pgid) == []
    assert not os.path.exists(temp_dir)


def _submit(
    cluster: LocalCluster, *job_args: str, timeout_s: float = SUBMIT_TIMEOUT_S
) -> tuple[subprocess.CompletedProcess, str, str]:
    """(the blocking `ray job submit`, the job's final status and its logs, both from the job API)."""
    from ray.job_submission import JobSubmissionClient

    res = cluster.submit(["python", "jobs/pipeline.py", *job_args], capture=True, timeout_s=timeout_s)
    print(res.stdout[-6000:], res.stderr[-3000:])  # shown by pytest when an assertion fails
    (job_id,) = set(re.findall(r"raysubmit_\w+", res.stdout + res.stderr))
    client = JobSubmissionClient(cluster.address)
    return res, str(client.get_job_status(job_id)), client.get_job_logs(job_id)


def check_smoke_report(report: dict) -> None:
    """The report of a `jobs/pipeline.py --smoke` job: every stage ran, a row for each of the six
    teachers, the ensemble and the HetComp MF student on both splits, each metric a recall/NDCG value.
    The successful job is submitted by test_two_nodes (the same `ray job submit` path, RUN on S3, one
    pipeline run for both checks); this module keeps the failing one."""
    assert report["dataset"] == "synthetic"
    assert {"data", "teachers", "knowledge", "student"} <= set(report["stage_times"])  # every stage ran
    rows = {(r["method"], r["student"], r["split"]): r for r in report["rows"]}
    expected = {(t, "-") for t in ("mf", "ml", "dnn", "gnn", "ae", "iae")} | {
        ("ensemble", "-"),
        ("hetcomp", "mf"),
    }
    assert {(m, s) for m, s, _ in rows} == expected
    assert {split for *_, split in rows} == {"valid", "test"}
    for key, r in rows.items():
        vals = [r["R@10"], r["N@10"], r["R@50"], r["N@50"]]
        assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in vals), key
        assert r["R@50"] >= r["R@10"], key  # recall can only grow with K


def test_job_with_a_missing_input_fails_with_the_reason_in_its_logs(cluster, tmp_path):
    missing, run = tmp_path / "missing.csv", tmp_path / "bad-run"
    res, status, logs = _submit(
        cluster, "--smoke", "--input", str(missing), "--format", "csv", "--out", str(run)
    )
    assert status == "FAILED"
    assert res.returncode == 1, "ray job submit exits 1 for a FAILED job"
    last = logs.rstrip().splitlines()[-1]
    assert last.startswith(f"error: {missing}: file not found"), "the job's last log line is the reason"
    assert last in res.stdout, "and `ray job submit` shows it"
    assert not run.exists(), "bad input is rejected before anything is written"
