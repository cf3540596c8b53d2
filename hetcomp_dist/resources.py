"""Resource requests from the config and a view of the cluster, never from what it holds at start alone.

An autoscaling cluster may hold no GPU node, and few CPUs, when a stage starts, and grow when work asks for
more. So every request is either explicit in the config (``teachers.num_gpus >= 0``, ``eval.max_tasks > 0``,
``knowledge.max_tasks > 0``) or sized from the cluster's *capacity*: the most its autoscaler may grow it to,
where the cluster reports that (Ray's autoscaler v2 writes its node groups to the GCS: KubeRay with the
in-tree autoscaler, the cluster launcher with ``RAY_enable_autoscaler_v2=1``), else what its alive nodes
hold (a fixed cluster, or an autoscaler that does not report: set the requests explicitly there, as
``cluster/pipeline.yaml`` does for the GPU group).

The decisions are pure functions of (config, `ClusterView`), tested with fake views; `cluster_view` is the
one place that asks Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from hetcomp_dist import storage
from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.errors import InputError


@dataclass(frozen=True)
class NodeGroup:
    """One node type of an autoscaling cluster: the resources of one node and the most nodes of it."""

    name: str
    resources: Mapping[str, float]
    max_count: int  # -1: unbounded


@dataclass(frozen=True)
class ClusterView:
    """What a Ray cluster holds now and what it may grow to.

    Attributes:
        alive_nodes: nodes alive now.
        now: total resources of the alive nodes (``ray.cluster_resources()``).
        groups: the autoscaler's node groups; None when the cluster reports none (fixed, or not v2).
    """

    alive_nodes: int
    now: Mapping[str, float] = field(default_factory=dict)
    groups: tuple[NodeGroup, ...] | None = None

    def capacity(self, resource: str) -> float:
        """The most of `resource` the cluster may hold (math.inf: an unbounded group has it)."""
        most = float(self.now.get(resource, 0.0))
        if self.groups is None:
            return most
        total = 0.0
        for g in self.groups:
            per_node = float(g.resources.get(resource, 0.0))
            if per_node > 0 and g.max_count != 0:
                total += math.inf if g.max_count < 0 else per_node * g.max_count
        return max(most, total)

    def max_nodes(self) -> float:
        """The most nodes the cluster may have (math.inf: an unbounded group)."""
        if self.groups is None:
            return self.alive_nodes
        total = sum(math.inf if g.max_count < 0 else g.max_count for g in self.groups)
        return max(self.alive_nodes, total)


def cluster_view() -> ClusterView:
    """The view of the cluster this process is connected to (Ray must be initialised)."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ClusterView(nodes, dict(ray.cluster_resources()), _autoscaler_groups())


def this_node() -> dict:
    """{"node_id", "host", "pid"} of this process: where a task, actor or Train worker ran (node_id is
    Ray's hex id, "" in a process not connected to Ray)."""
    import os
    import socket

    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return {"node_id": node_id, "host": socket.gethostname(), "pid": os.getpid()}


def _autoscaler_groups() -> tuple[NodeGroup, ...] | None:
    """The node groups the autoscaler reported to the GCS, or None (Ray Train reads the same record)."""
    from ray._private import state

    config = state.state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return tuple(
        NodeGroup(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
        for g in config.node_group_configs
    )


# ----------------------------------------------------------------------------------- decisions
def teacher_gpus(t: TeachersConfig, n_teachers: int, view: ClusterView) -> float:
    """GPUs per teacher actor: ``teachers.num_gpus`` when >= 0; else (auto) an equal share of the GPUs the
    cluster may hold (its autoscaler's maximum where it reports one), at most 1, and 0 when it has none."""
    if t.num_gpus >= 0:
        return t.num_gpus
    total = view.capacity("GPU")
    return min(1.0, total / max(n_teachers, 1)) if total > 0 else 0.0


def task_pool(n_tasks: int, cpus_per_task: float, view: ClusterView, explicit: int = 0) -> tuple[int, int]:
    """(min, max) concurrent map tasks or pool actors for `n_tasks` pieces of work.

    max: `explicit` when > 0, else as many as the cluster's CPU capacity holds; min: as many of those as
    the nodes alive now hold (an autoscaling pool starts there and grows as nodes join). Both in
    [1, n_tasks]; on a fixed cluster min = max.
    """
    n = max(1, n_tasks)

    def fit(cpus: float) -> int:
        if cpus_per_task <= 0 or math.isinf(cpus):
            return n
        return max(1, min(n, int(cpus / cpus_per_task + 1e-9)))

    most = max(1, min(n, explicit)) if explicit > 0 else fit(view.capacity("CPU"))
    return min(most, fit(float(view.now.get("CPU", 0.0)))), most


def local_run(run: str) -> bool:
    """True for a RUN on this machine's file system (a plain path or ``file://``)."""
    return not storage.is_uri(run) or run.startswith("file://")


def check_shared_storage(run: str, view: ClusterView, where: str = "--out") -> None:
    """InputError when RUN is local but the cluster has, or may grow to, more than one node.

    Every node's tasks, actors and Train workers read and write RUN: a path on the driver's disk is not
    there on the other nodes (raised before anything runs).
    """
    if not local_run(run) or view.max_nodes() <= 1:
        return
    nodes = (
        f"{view.alive_nodes} nodes"
        if view.alive_nodes > 1
        else f"a cluster that autoscales to {view.max_nodes():g} nodes"
    )
    raise InputError(
        f"{where} {run}",
        f"a local RUN on {nodes}: the other nodes cannot see this machine's disk",
        "put RUN on shared storage every node reaches: --out s3://BUCKET/PATH (or gs://)",
    )
