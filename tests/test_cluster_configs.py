"""Offline checks of cluster/: the launcher YAML against Ray's shipped schema, the RayJob against the
KubeRay CRD schema, private dashboards, the RayJob's NetworkPolicy and Ray token auth, pinned runtimes,
and resource shapes that fit the pipeline's actors and Train workers."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import ray
import tomllib
import yaml

from hetcomp_dist.cli.jobs import config_from_args, parser
from hetcomp_dist.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAYJOB_CRD = REPO.parent / "shared" / "schemas" / "kuberay" / "ray.io_rayjobs.yaml"
RAY_VERSION = ray.__version__


def _documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / name).read_text()))


def _yaml(name: str) -> dict:
    """The file's first document (rayjob.yaml: the RayJob; the NetworkPolicy follows it)."""
    return _documents(name)[0]


def _pins(lines: list[str]) -> dict[str, str]:
    """{canonical name: pinned version} of `name[extras]==version` lines; comments skipped."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one `==` pin per package
        assert spec.operator == "==", f"{line}: not pinned with =="
        out[canonicalize_name(req.name)] = spec.version
    return out


def _rayjob_runtime_env() -> dict:
    return yaml.safe_load(_yaml("rayjob.yaml")["spec"]["runtimeEnvYAML"])


# ------------------------------------------------------------------------------- file headers
@pytest.mark.parametrize(
    "name", ["aws.yaml", "rayjob.yaml", "runtime_env.yaml", "pipeline.yaml", "requirements.txt", "local.sh"]
)
def test_each_cluster_file_starts_with_the_command_that_uses_it(name):
    text = (CLUSTER / name).read_text().splitlines()
    first = text[1] if text[0].startswith("#!") else text[0]
    assert first.startswith("# ")
    commands = (
        "ray up cluster/aws.yaml",
        "kubectl apply -f cluster/rayjob.yaml",
        "ray job submit",
        "pip install -r cluster/requirements.txt",
        "python jobs/pipeline.py --config cluster/pipeline.yaml",
        "bash cluster/local.sh",
    )
    assert any(c in first for c in commands), first
    if name not in ("requirements.txt", "local.sh"):
        assert f"cluster/{name}" in first


# ------------------------------------------------------------------------- cluster launcher
def _launcher() -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(_yaml("aws.yaml"))
    validate_config(cfg)
    return cfg


def test_launcher_yaml_validates_against_rays_schema():
    cfg = _launcher()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head"
    workers = {k: v for k, v in types.items() if k != "head"}
    gpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) > 0]
    cpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) == 0]
    assert len(gpu) >= 1 and len(cpu) >= 2, "a GPU group and autoscaling CPU groups"
    for k, v in workers.items():  # autoscaling: room to grow above the minimum
        assert v["max_workers"] > v["min_workers"], k
    assert sum(v["min_workers"] for v in workers.values()) <= cfg["max_workers"]


def test_launcher_validation_rejects_a_misspelled_key():
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = _yaml("aws.yaml")
    bad["available_node_types"]["gpu"]["max_worker"] = 3
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(bad))


def test_launcher_keeps_the_dashboard_private():
    cfg = _launcher()
    (start,) = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in start
    body = "\n".join(line.split("#")[0] for line in (CLUSTER / "aws.yaml").read_text().splitlines())
    assert "0.0.0.0" not in body
    assert not cfg["provider"].get("security_group", {}).get("IpPermissions"), "no extra inbound rules"


def test_launcher_installs_the_pinned_requirements():
    cfg = _launcher()
    (remote,) = [r for r, local in cfg["file_mounts"].items() if Path(REPO / local).resolve() == CLUSTER]
    assert any(f"pip install --no-cache-dir -r {remote}/requirements.txt" in c for c in cfg["setup_commands"])
    images = [cfg["docker"]["image"]] + [
        t["docker"]["worker_image"] for t in cfg["available_node_types"].values() if "docker" in t
    ]
    for image in images:
        assert image.startswith(f"rayproject/ray:{RAY_VERSION}-py311"), image


# ------------------------------------------------------------------------------ pinned runtime
def test_requirements_pin_every_dependency_of_pyproject():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _pins((CLUSTER / "requirements.txt").read_text().splitlines())
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep} is not pinned in cluster/requirements.txt"
        assert dep.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {dep}"
    assert set(pins) == {canonicalize_name(Requirement(d).name) for d in deps}, "pins without a dependency"
    assert pins["ray"] == RAY_VERSION


def test_rayjob_pins_the_same_requirements():
    env = _rayjob_runtime_env()
    assert _pins(env["pip"]["packages"]) == _pins((CLUSTER / "requirements.txt").read_text().splitlines())
    rcs = _yaml("rayjob.yaml")["spec"]["rayClusterSpec"]
    assert rcs["rayVersion"] == RAY_VERSION
    for c in _containers(rcs):
        assert c["image"].startswith(f"rayproject/ray:{RAY_VERSION}-py311"), c["image"]


def test_runtime_envs_parse_and_name_the_gloo_interface(monkeypatch):
    from ray.runtime_env import RuntimeEnv

    monkeypatch.chdir(REPO)  # `pip: cluster/requirements.txt` is read where `ray job submit` runs
    launcher_env = RuntimeEnv(**_yaml("runtime_env.yaml")).to_dict()
    kube_env = RuntimeEnv(**_rayjob_runtime_env()).to_dict()
    assert _pins(launcher_env["pip"]["packages"]) == _pins(kube_env["pip"]["packages"])
    for env in (launcher_env, kube_env):
        assert env["env_vars"]["GLOO_SOCKET_IFNAME"]
        assert env["env_vars"]["NCCL_SOCKET_IFNAME"] == env["env_vars"]["GLOO_SOCKET_IFNAME"]
    assert kube_env["working_dir"].startswith("s3://") and kube_env["working_dir"].endswith(".zip")


# ------------------------------------------------------------------------------ KubeRay RayJob
def _values(node):
    """Every scalar of a parsed YAML tree."""
    if isinstance(node, dict):
        for v in node.values():
            yield from _values(v)
    elif isinstance(node, list):
        for v in node:
            yield from _values(v)
    else:
        yield node


def _strict(schema):
    """additionalProperties: false on every object that lists properties (kubeconform's strict mode)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def rayjob_validator():
    if not RAYJOB_CRD.exists():
        pytest.skip(f"KubeRay CRD schema not found at {RAYJOB_CRD}")
    import jsonschema

    crd = yaml.safe_load(RAYJOB_CRD.read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(v1["schema"]["openAPIV3Schema"])
    # apiVersion/kind/metadata are the API server's business, not the CRD schema's
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def test_rayjob_validates_against_the_kuberay_crd(rayjob_validator):
    job = _yaml("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in rayjob_validator.iter_errors(job)
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "path, key",
    [
        (("spec",), "entryPoint"),
        (("spec", "rayClusterSpec", "headGroupSpec"), "servicetype"),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0), "maxReplica"),
    ],
)
def test_strict_crd_validation_rejects_misspelled_fields(rayjob_validator, path, key):
    job = _yaml("rayjob.yaml")
    node = job
    for p in path:
        node = node[p]
    node[key] = 1
    assert any(key in e.message for e in rayjob_validator.iter_errors(job))


def test_rayjob_keeps_the_dashboard_private():
    spec = _yaml("rayjob.yaml")["spec"]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    exposed = [v for v in _values(spec) if v in ("LoadBalancer", "NodePort") or "0.0.0.0" in str(v)]
    assert not exposed, exposed
    assert spec["shutdownAfterJobFinishes"] is True


def _pod_templates(job: dict) -> dict[str, dict]:
    """{what: pod template} of every pod the RayJob makes: head, each worker group, the submitter."""
    rcs = job["spec"]["rayClusterSpec"]
    out = {"head": rcs["headGroupSpec"]["template"], "submitter": job["spec"]["submitterPodTemplate"]}
    out |= {f"worker {g['groupName']}": g["template"] for g in rcs["workerGroupSpecs"]}
    return out


def test_rayjob_network_policy_admits_only_the_clusters_own_pods():
    job, *rest = _documents("rayjob.yaml")
    (policy,) = [d for d in rest if d["kind"] == "NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    selector = spec["podSelector"]["matchLabels"]
    assert selector and set(spec["podSelector"]) == {"matchLabels"}
    for what, template in _pod_templates(job).items():  # selects the head (and every other pod of the job)
        assert selector.items() <= template["metadata"]["labels"].items(), what
    head_ports = {
        p["containerPort"]
        for p in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert head_ports == {6379, 8265, 10001}
    own = [r for r in spec["ingress"] if r["from"] == [{"podSelector": {"matchLabels": selector}}]]
    assert len(own) == 1 and "ports" not in own[0]  # the cluster's pods: every port (workers pick theirs)
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if peer != {"podSelector": {"matchLabels": selector}}:
                # the KubeRay operator, and only to the job API
                assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                assert rule["ports"] == [{"protocol": "TCP", "port": 8265}]


def test_every_rayjob_container_gets_the_ray_token_from_the_secret():
    job = _yaml("rayjob.yaml")
    auth = job["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token"
    secret = auth["secretName"]
    containers = [c for t in _pod_templates(job).values() for c in t["spec"]["containers"]]
    envs = [c["env"] for c in containers] + [job["spec"]["rayClusterSpec"]["autoscalerOptions"]["env"]]
    assert len(envs) == 5  # head, cpu and gpu workers, submitter, autoscaler
    for env in envs:
        by_name = {e["name"]: e for e in env}
        assert by_name["RAY_AUTH_MODE"]["value"] == "token"
        token = by_name["RAY_AUTH_TOKEN"]
        assert "value" not in token  # never inline
        assert token["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
    header = (CLUSTER / "rayjob.yaml").read_text().split("apiVersion:")[0]
    assert f"kubectl create secret generic {secret} --from-literal=auth_token=" in header


def test_rayjob_entrypoint_is_a_valid_job_command_line():
    argv = shlex.split(_yaml("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"]
    assert (REPO / argv[1]).exists()
    cfg = config_from_args(parser("pipeline").parse_args(argv[2:]))
    assert cfg.run.startswith("s3://") and cfg.data.input.startswith("s3://")
    assert cfg.data.format == "citeulike"
    assert cfg.student == load_config(str(CLUSTER / "pipeline.yaml")).student  # the cluster's shapes


# --------------------------------------------------------------------------- resource shapes
def _cpu(q: str | int | float) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _containers(rcs: dict) -> list[dict]:
    groups = [rcs["headGroupSpec"], *rcs["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def launcher_nodes() -> dict[str, tuple[dict[str, float], int]]:
    """{worker node type: ({CPU, GPU}, max_workers)} of cluster/aws.yaml."""
    cfg = _launcher()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs no tasks"
    return {
        k: ({"CPU": v["resources"].get("CPU", 0), "GPU": v["resources"].get("GPU", 0)}, v["max_workers"])
        for k, v in cfg["available_node_types"].items()
        if k != cfg["head_node_type"]
    }


def kuberay_nodes() -> dict[str, tuple[dict[str, float], int]]:
    """{worker group: ({CPU, GPU}, maxReplicas)} of cluster/rayjob.yaml, from the containers' limits."""
    rcs = _yaml("rayjob.yaml")["spec"]["rayClusterSpec"]
    assert rcs["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs no tasks"
    out = {}
    for g in rcs["workerGroupSpecs"]:
        (c,) = g["template"]["spec"]["containers"]
        lim, req = c["resources"]["limits"], c["resources"]["requests"]
        assert lim == req, f"{g['groupName']}: requests = limits, so Ray's view matches the pod's"
        res = {"CPU": _cpu(lim["cpu"]), "GPU": float(lim.get("nvidia.com/gpu", 0))}
        if "num-cpus" in g["rayStartParams"]:
            assert float(g["rayStartParams"]["num-cpus"]) == res["CPU"]
        out[g["groupName"]] = (res, g["maxReplicas"])
    return out


def capacity(bundle: dict[str, float], nodes: dict[str, tuple[dict[str, float], int]]) -> int:
    """How many copies of `bundle` the cluster holds at full scale (each copy on one node)."""
    total = 0
    for res, max_nodes in nodes.values():
        per_node = min(
            (math.floor(res.get(r, 0) / need + 1e-9) for r, need in bundle.items() if need > 0), default=0
        )
        total += per_node * max_nodes
    return total


def test_capacity_hand_worked():
    nodes = {"gpu": ({"CPU": 8, "GPU": 1}, 4), "cpu": ({"CPU": 16, "GPU": 0}, 2)}
    assert capacity({"CPU": 3, "GPU": 0.5}, nodes) == 2 * 4  # 2 per GPU node (GPU-bound), none on CPU
    assert capacity({"CPU": 3, "GPU": 0}, nodes) == 2 * 4 + 5 * 2
    assert capacity({"CPU": 0.3, "GPU": 0}, nodes) == 26 * 4 + 53 * 2
    assert capacity({"CPU": 1, "GPU": 2}, nodes) == 0


def demands(cfg: Config) -> dict[str, tuple[dict[str, float], int]]:
    """{what: (resources of one, how many at once)} for the teacher actors and the Train workers."""
    t, s = cfg.teachers, cfg.student
    return {
        "teacher actors": ({"CPU": t.num_cpus, "GPU": max(t.num_gpus, 0.0)}, len(t.names)),
        "train workers": (
            {"CPU": s.cpus_per_worker, "GPU": 1.0 if s.use_gpu else 0.0},
            max(s.num_workers, 1),
        ),
    }


CONFIGS = {
    "defaults": lambda: Config(),
    "cluster/pipeline.yaml": lambda: load_config(str(CLUSTER / "pipeline.yaml")),
}


@pytest.mark.parametrize("cluster", ["launcher", "kuberay"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_clusters_fit_the_pipelines_actors_and_workers(cluster, config):
    nodes = launcher_nodes() if cluster == "launcher" else kuberay_nodes()
    for what, (bundle, n) in demands(CONFIGS[config]()).items():
        assert capacity(bundle, nodes) >= n, f"{cluster}: {n} {what} of {bundle} do not fit {nodes}"


def test_cluster_pipeline_config_uses_the_gpu_group():
    cfg = load_config(str(CLUSTER / "pipeline.yaml"))
    assert cfg.student.use_gpu and cfg.teachers.num_gpus > 0
    for nodes in (launcher_nodes(), kuberay_nodes()):
        gpu_nodes = {k: v for k, v in nodes.items() if v[0]["GPU"] > 0}
        # the GPU group alone holds every Train worker and every teacher actor
        for what, (bundle, n) in demands(cfg).items():
            assert capacity(bundle, gpu_nodes) >= n, what


def test_both_clusters_have_the_same_worker_shapes():
    shapes = lambda nodes: sorted((r["CPU"], r["GPU"]) for r, _ in nodes.values())  # noqa: E731
    assert set(shapes(launcher_nodes())) == set(shapes(kuberay_nodes()))


@pytest.mark.parametrize("cluster", ["launcher", "kuberay"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_teachers_ask_for_gpus_while_the_gpu_group_is_scaled_to_zero(cluster, config):
    """Requests follow the config and the cluster's maximum, not the nodes up when the job starts."""
    from hetcomp_dist.resources import ClusterView, NodeGroup, task_pool, teacher_gpus

    nodes = launcher_nodes() if cluster == "launcher" else kuberay_nodes()
    groups = tuple(NodeGroup(name, res, n) for name, (res, n) in nodes.items())
    cpu_groups = [r for r, _ in nodes.values() if r["GPU"] == 0]
    cpu_only_now = {"CPU": sum(r["CPU"] for r in cpu_groups)}  # the head and one node per CPU group
    view = ClusterView(alive_nodes=1 + len(cpu_groups), now=cpu_only_now, groups=groups)
    cfg = CONFIGS[config]()
    gpus = teacher_gpus(cfg.teachers, len(cfg.teachers.names), view)
    assert 0 < gpus <= 1, "the teachers wait for the GPU group instead of training on CPUs"
    low, high = task_pool(1000, 1.0, view, cfg.eval.max_tasks)
    most = sum(r["CPU"] * n for r, n in nodes.values())
    assert (low, high) == (cpu_only_now["CPU"], most), "evaluation fans out as the groups grow"
