"""Local mode through the real job path: a private one-node Ray cluster, `ray job submit`, teardown.

``python -m hetcomp_dist.local_cluster [job options]`` (or ``bash cluster/local.sh ...``) starts a Ray
head that listens on 127.0.0.1 only, with its own free ports and temp dir, submits
``jobs/pipeline.py [job options]`` to it with a blocking ``ray job submit --working-dir .`` -- the same
command a cloud cluster gets -- and stops that cluster, and only it, when the job ends: the head runs
in its own process group, which is signalled (``ray stop`` would stop every Ray on the machine).
Relative paths in the options are made absolute (the job runs in a temporary copy of the repository).
Exits with the job's status (0 SUCCEEDED, 1 FAILED).

The end-to-end tests drive the same `LocalCluster`; `add_node` starts a second node beside the head (each
in its own process group and temp dir) for the two-node test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hetcomp_dist import storage

REPO = Path(__file__).resolve().parents[1]
NO_AGENT = "No available agent to submit job"  # Ray's job API before the head's agent registers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """Environment for the head and the CLI: token auth off (loopback only), quiet Ray Data."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _node_ports() -> dict[str, int]:
    """Free ports for the per-node services of one more Ray node on this machine."""
    names = (
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
        "--node-manager-port",
        "--object-manager-port",
    )
    return {name: free_port() for name in names}


def _start_group(cmd: list[str], log_path: str) -> subprocess.Popen:
    """Starts `cmd` in a session (process group) of its own, output to `log_path`: the group is what
    `stop` signals, exactly this node's processes."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True
        )


class LocalCluster:
    """A private Ray head on 127.0.0.1, and optionally more nodes beside it; use as a context manager.

    Args:
        num_cpus: CPUs the head advertises (scheduling tokens; None = the machine's count).
        start_timeout_s: how long to wait for the job API (and for an added node to join).
    """

    def __init__(self, num_cpus: int | None = None, start_timeout_s: float = 120.0):
        self.num_cpus, self.start_timeout_s = num_cpus, start_timeout_s
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # short path: Ray's unix sockets live under it (108-byte limit)
        self.temp_dir = tempfile.mkdtemp(prefix="hcray-", dir="/tmp")
        self.proc: subprocess.Popen | None = None  # the head's `ray start`
        self.nodes: list[tuple[subprocess.Popen, str]] = []  # added nodes: `ray start`, temp dir

    def start(self) -> LocalCluster:
        ports = {
            "--port": self.gcs_port,
            "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            **_node_ports(),
        }
        cmd = [
            shutil.which("ray") or "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--temp-dir={self.temp_dir}",
            *(f"{k}={v}" for k, v in ports.items()),
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        self.proc = _start_group(cmd, os.path.join(self.temp_dir, "head.log"))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"ray start exited with {self.proc.returncode}: {self.head_log()[-2000:]}"
                self.stop()  # whatever it started, and the temp dir
                raise RuntimeError(msg)
            if self._job_api_up():
                return self
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"the job API at {self.address} did not come up in {self.start_timeout_s:.0f}s")

    def add_node(self, num_cpus: int, resources: dict[str, float] | None = None) -> str:
        """Starts one more Ray node on this machine that joins the head (own ports, temp dir and process
        group, like the head's); returns its node id once the head lists it alive.

        Args:
            num_cpus: CPUs it advertises.
            resources: custom resources it advertises (e.g. {"node_b": 1}, to find it again).
        """
        temp_dir = tempfile.mkdtemp(prefix="hcnode-", dir="/tmp")
        cmd = [
            shutil.which("ray") or "ray",
            "start",
            f"--address=127.0.0.1:{self.gcs_port}",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={num_cpus}",
            *(f"{k}={v}" for k, v in _node_ports().items()),
        ]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        # the job API can answer before the head's own node registers (a loaded machine)
        before = self._wait_for_nodes(1 + len(self.nodes))
        proc = _start_group(cmd, os.path.join(temp_dir, "node.log"))
        self.nodes.append((proc, temp_dir))
        new = self._wait_for_nodes(len(before) + 1, proc, Path(temp_dir, "node.log")) - before
        return new.pop()

    def _wait_for_nodes(
        self, n: int, proc: subprocess.Popen | None = None, log: Path | None = None
    ) -> set[str]:
        """The alive node ids once there are `n` (TimeoutError after `start_timeout_s`; RuntimeError when
        `proc`, a node's `ray start`, exits first)."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
                )
            ids = {node["node_id"] for node in self.alive_nodes()}
            if len(ids) >= n:
                return ids
            time.sleep(1.0)
        raise TimeoutError(f"{n} node(s) did not come up at {self.address} in {self.start_timeout_s:.0f}s")

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes, from the head's state API: node_id, is_head_node, resources_total."""
        from ray.util.state import list_nodes

        nodes = list_nodes(
            address=self.address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False
        )
        return [{k: getattr(n, k) for k in ("node_id", "is_head_node", "resources_total")} for n in nodes]

    def _job_api_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as r:
                return "ray_version" in json.loads(r.read())
        except (OSError, ValueError):
            return False

    def head_log(self) -> str:
        path = os.path.join(self.temp_dir, "head.log")
        return Path(path).read_text(errors="replace") if os.path.exists(path) else ""

    def submit(
        self,
        entrypoint: list[str],
        working_dir: str | os.PathLike = REPO,
        capture: bool = False,
        timeout_s: float | None = None,
    ) -> subprocess.CompletedProcess:
        """Blocking ``ray job submit --working-dir`` of `entrypoint`; exit 0 = SUCCEEDED, 1 = FAILED.

        The job API can answer before the head's dashboard agent has registered (a loaded
        machine); a submission then fails with "No available agent to submit job" and creates no
        job. With `capture` such a submission is retried for up to `start_timeout_s` (uncaptured
        output streams to the terminal, where the message is seen and the command can be rerun).
        """
        cmd = [
            shutil.which("ray") or "ray",
            "job",
            "submit",
            "--address",
            self.address,
            "--working-dir",
            str(working_dir),
            "--",
            *entrypoint,
        ]
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            res = subprocess.run(
                cmd, cwd=working_dir, env=ray_env(), text=True, timeout=timeout_s, capture_output=capture
            )
            if not capture or NO_AGENT not in res.stdout + res.stderr or time.monotonic() > deadline:
                return res
            time.sleep(2.0)

    def stop(self, grace_s: float = 3.0) -> None:
        """Stops the added nodes, then the head: each one's process group, and removes the temp dirs."""
        for proc, temp_dir in reversed(self.nodes):
            _stop_group(proc, grace_s)
            shutil.rmtree(temp_dir, ignore_errors=True)
        self.nodes = []
        if self.proc is not None:
            _stop_group(self.proc, grace_s)
            self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the process group `proc` leads, SIGKILL to what is left after `grace_s`.

    (GCS, raylet, dashboard and workers exit on SIGTERM within a second; the blocking `ray start`
    and the autoscaler monitor ignore it, hence the SIGKILL.)
    """
    pgid = proc.pid  # session leader: its pid is the group id
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(pgid):
            proc.poll()  # reap the leader so it does not linger as a zombie
            time.sleep(0.2)
        if not _group_alive(pgid):
            break
    proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# every local path option of the jobs (storage.PATH_OPTIONS, as flags)
PATH_OPTIONS = tuple("--" + name.replace("_", "-") for name in storage.PATH_OPTIONS) + ("--output",)


def absolute_paths(argv: list[str]) -> list[str]:
    """Job options with local paths made absolute: the job runs in a temporary copy of the working
    dir, but on this machine, so absolute paths reach the caller's files (URIs pass unchanged)."""
    out, take = [], False
    for a in argv:
        opt, eq, val = a.partition("=")
        if take and "://" not in a:
            a = os.path.abspath(a)
        elif eq and opt in PATH_OPTIONS and "://" not in val:
            a = f"{opt}={os.path.abspath(val)}"
        out.append(a)
        take = a in PATH_OPTIONS
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    with LocalCluster() as cluster:
        print(f"local Ray cluster: dashboard/job API at {cluster.address} (127.0.0.1 only)", flush=True)
        return cluster.submit(["python", "jobs/pipeline.py", *absolute_paths(argv)]).returncode


if __name__ == "__main__":
    sys.exit(main())
