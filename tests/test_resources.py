"""Resource requests as pure decisions from (config, cluster view): fake views of fixed and autoscaling
clusters, a GPU group scaled to zero, and the refusal of a local RUN on several nodes."""

from __future__ import annotations

import math

import pytest

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.errors import InputError
from hetcomp_dist.resources import (
    ClusterView,
    NodeGroup,
    check_shared_storage,
    task_pool,
    teacher_gpus,
)

# the shape of cluster/aws.yaml: a CPU-only head, CPU groups, and a GPU group that starts at zero nodes
GROUPS = (
    NodeGroup("head", {"CPU": 0}, 1),
    NodeGroup("cpu", {"CPU": 16}, 8),
    NodeGroup("gpu", {"CPU": 8, "GPU": 1}, 4),
)
GPU_AT_ZERO = ClusterView(alive_nodes=2, now={"CPU": 16}, groups=GROUPS)  # head + one CPU node, no GPU yet
FIXED_CPU = ClusterView(alive_nodes=1, now={"CPU": 2})
FIXED_GPU = ClusterView(alive_nodes=1, now={"CPU": 8, "GPU": 2})


def test_capacity_is_the_autoscalers_maximum_or_what_is_there():
    assert GPU_AT_ZERO.capacity("GPU") == 4 and GPU_AT_ZERO.capacity("CPU") == 16 * 8 + 8 * 4
    assert GPU_AT_ZERO.max_nodes() == 13
    assert FIXED_CPU.capacity("GPU") == 0 and FIXED_CPU.capacity("CPU") == 2 and FIXED_CPU.max_nodes() == 1
    unbounded = ClusterView(1, {"CPU": 4}, (NodeGroup("cpu", {"CPU": 4}, -1),))
    assert unbounded.capacity("CPU") == math.inf and unbounded.max_nodes() == math.inf
    # a report that lags the nodes alive never lowers what is there
    assert ClusterView(3, {"CPU": 48}, (NodeGroup("cpu", {"CPU": 16}, 2),)).capacity("CPU") == 48


@pytest.mark.parametrize(
    "num_gpus, view, expected",
    [
        (0.5, GPU_AT_ZERO, 0.5),  # explicit (cluster/pipeline.yaml): whatever the cluster holds now
        (0.0, FIXED_GPU, 0.0),  # explicit CPU teachers on a GPU cluster
        (-1.0, GPU_AT_ZERO, 4 / 6),  # auto: the GPU group's maximum, though it is at zero nodes now
        (-1.0, FIXED_GPU, 2 / 6),  # auto on a fixed cluster: what is there
        (-1.0, FIXED_CPU, 0.0),  # auto without a GPU anywhere: CPU teachers
        (-1.0, ClusterView(1, {"CPU": 8, "GPU": 8}), 1.0),  # at most one GPU per actor
    ],
)
def test_teacher_gpus(num_gpus, view, expected):
    assert teacher_gpus(TeachersConfig(num_gpus=num_gpus), 6, view) == pytest.approx(expected)


def test_task_pool():
    assert task_pool(20, 1.0, FIXED_CPU) == (2, 2)  # a fixed cluster: its CPUs, min = max
    assert task_pool(1, 1.0, FIXED_CPU) == (1, 1)  # never more than the work
    assert task_pool(200, 1.0, GPU_AT_ZERO) == (16, 160)  # starts on what is there, grows to the maximum
    assert task_pool(20, 1.0, GPU_AT_ZERO) == (16, 20)
    assert task_pool(20, 1.0, GPU_AT_ZERO, explicit=4) == (4, 4)  # eval.max_tasks
    assert task_pool(20, 0.5, FIXED_CPU) == (4, 4)
    head_only = ClusterView(1, {"CPU": 0}, GROUPS)  # every worker group scaled to zero
    assert task_pool(20, 1.0, head_only) == (1, 20)
    assert task_pool(20, 1.0, ClusterView(1, {"CPU": 0})) == (1, 1)


@pytest.mark.parametrize(
    "run, view, refused",
    [
        ("/data/run", FIXED_CPU, False),
        ("/data/run", ClusterView(2, {"CPU": 2}), True),
        ("file:///data/run", ClusterView(2, {"CPU": 2}), True),
        ("/data/run", GPU_AT_ZERO, True),
        ("/data/run", ClusterView(1, {"CPU": 0}, GROUPS), True),  # one node now, more when it scales
        ("s3://bucket/run", ClusterView(2, {"CPU": 2}), False),
        ("gs://bucket/run", GPU_AT_ZERO, False),
    ],
)
def test_a_local_run_needs_a_one_node_cluster(run, view, refused):
    if refused:
        with pytest.raises(InputError, match="a local RUN on .* s3://"):
            check_shared_storage(run, view)
    else:
        check_shared_storage(run, view)


def test_the_view_of_a_local_ray(ray_session):
    from hetcomp_dist.resources import cluster_view, this_node

    view = cluster_view()
    assert view.alive_nodes == 1 and view.groups is None and view.capacity("CPU") == 4
    assert this_node()["node_id"] == ray_session.get_runtime_context().get_node_id()
