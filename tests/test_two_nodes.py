"""Two Ray nodes for real, on this machine: a private head and a second node (`ray start --address=...
--num-cpus=1 --resources='{"node_b": 1}'`), each with its own temp dir and process group, RUN on S3 (the
moto server on loopback; both nodes inherit the AWS_* variables), and `ray job submit` of
``jobs/pipeline.py --smoke``. The job must succeed, write the full report, and run teacher actors,
knowledge tasks and Train workers on both nodes (each stage records where they ran), and a local RUN on
the same cluster is refused before anything runs. Only the processes this test started are stopped
(their process groups).
"""

from __future__ import annotations

import os

import pytest
from test_job_submit import _group_members, _submit, check_smoke_report  # the same job-API helpers

from hetcomp_dist import storage
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

BUCKET = "hetcomp-test"  # created by conftest's `s3` fixture
SUBMIT_TIMEOUT_S = 900
# Every CPU is a scheduling token of one node: six teacher actors of 0.3 CPU cannot all fit one node, nor
# two Train workers of 0.75; the knowledge tasks' 0.25 CPU fit beside a Train worker (DKC rounds run while
# the workers hold their CPUs), and Ray Data spreads them over the nodes.
OVERRIDES = (
    "knowledge.distributed_min_users=0",
    "knowledge.task_cpus=0.25",
    "student.num_workers=2",
    "student.cpus_per_worker=0.75",
)


@pytest.fixture(scope="module")
def two_nodes(s3):
    """(cluster, head node id, node_b's id); started after `s3`, so both nodes get its AWS_* variables."""
    cluster = LocalCluster(num_cpus=1).start()
    groups = [cluster.proc.pid]
    try:
        node_b = cluster.add_node(num_cpus=1, resources={"node_b": 1})
        groups.append(cluster.nodes[0][0].pid)
        assert all(_group_members(g) for g in groups), "each node runs in its own process group"
        nodes = cluster.alive_nodes()
        (head,) = [n["node_id"] for n in nodes if n["is_head_node"]]
        assert {n["node_id"] for n in nodes} == {head, node_b}
        assert [n["resources_total"].get("node_b") for n in nodes if n["node_id"] == node_b] == [1.0]
        yield cluster, head, node_b
    finally:
        temp_dirs = [cluster.temp_dir] + [d for _, d in cluster.nodes]
        cluster.stop()
    assert all(_group_members(g) == [] for g in groups), "only this cluster, and all of it, is gone"
    assert not any(os.path.exists(d) for d in temp_dirs)


def test_smoke_pipeline_runs_on_both_nodes(two_nodes):
    cluster, head, node_b = two_nodes
    run = f"s3://{BUCKET}/runs/two-nodes"
    res, status, logs = _submit(cluster, "--smoke", "--out", run, *OVERRIDES, timeout_s=SUBMIT_TIMEOUT_S)
    assert status == "SUCCEEDED"
    assert res.returncode == 0, "ray job submit exits 0 only for a SUCCEEDED job"
    layout = RunLayout(run)
    assert logs.rstrip().endswith(f"output: {layout.report_json}"), "the job's last line: the report"
    check_smoke_report(storage.read_json(layout.report_json))
    assert storage.exists(layout.report_md)
    both = {head, node_b}

    teachers = storage.read_manifest(layout.teachers)["names"]
    placed = {storage.read_manifest(layout.teacher(t))["node"]["node_id"] for t in teachers}
    assert placed == both, "teacher actors ran on both nodes"

    student = layout.student("hetcomp", "mf")
    summary = storage.read_json(layout.student_summary(student))
    assert {w["node_id"] for w in summary["worker_nodes"]} == both, "one Train worker per node"

    rounds = [storage.read_manifest(layout.round(0))]
    r = 1
    while (m := storage.read_manifest(layout.round(r, layout.student_rounds(student)))) is not None:
        rounds.append(m)
        r += 1
    assert len(rounds) >= 2, "round 0 and at least one DKC round"
    assert all(m["distributed"] for m in rounds)
    assert {n for m in rounds for n in m["shard_nodes"].values()} == both, "knowledge tasks on both nodes"


def test_a_local_run_is_refused_on_two_nodes(two_nodes, tmp_path):
    cluster, _, _ = two_nodes
    run = tmp_path / "local-run"
    res, status, logs = _submit(cluster, "--smoke", "--out", str(run), timeout_s=SUBMIT_TIMEOUT_S)
    assert status == "FAILED" and res.returncode == 1
    last = logs.rstrip().splitlines()[-1]
    assert last.startswith(f"error: --out {run}: a local RUN on 2 nodes"), last
    assert not run.exists(), "refused before anything is written"
