"""The fault drills' machinery: pipeline subprocesses, their processes, what a RUN holds after a fault.

Every pipeline runs as a subprocess in a session of its own (``start_new_session``) with a local Ray of
its own (a private ``RAY_TMPDIR``): the drill finds that Ray's processes by their session id, signals
only them, and after each run checks that none outlives it. From outside, Ray's state API (the run's own
dashboard) gives the pids of teacher actors and Ray Data tasks, and the RUN's files say when to strike;
`drill_faults` holds the faults themselves and ``jobs/drill_faults.py`` is the command.

After each fault: the report's rows must equal the undisturbed run's (bit for bit; students within
``student_atol``), no temporary file (``.<name>.tmp-*``), consumed DKC input or orphaned Ray Train
checkpoint may remain in RUN, and no process of the run's session may survive it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from hetcomp_dist import storage
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log

REPO = Path(__file__).resolve().parents[2]
CHILD = "hetcomp_dist.testing.drill_faults"  # ``python -m CHILD SPEC JOB-ARGS``: the job with one fault
STAGE = "drill"
TMP_FILE = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")  # storage._tmp_name
DKC_INPUT = re.compile(r"^round-\d+\.npz$")  # RunLayout.student_dkc_embeddings: deleted once consumed
DASHBOARD = re.compile(r"View the dashboard at \S*?(http://[0-9.]+:\d+)")
RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"
RAY_STARTED = "Started a local Ray instance"
RAY_START_FAILED = "timed out during startup"
RAY_START_ATTEMPTS = 3


class Missed(Exception):
    """The fault could not be injected (the moment passed, or the run ended first)."""


# ------------------------------------------------------------------------------------------ processes
def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(session) == sid and state != "Z":
            out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Launch:
    """One pipeline subprocess: the leader of its own session, its output in `log`."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.name, self.proc, self.log_path, self.t0 = name, proc, log_path, time.monotonic()
        self.dashboard: str | None = None

    @property
    def sid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state_api(self) -> str | None:
        """The address of this run's Ray dashboard (its state API), once the driver printed it."""
        if self.dashboard is None:
            m = DASHBOARD.search(self.text())
            self.dashboard = m.group(1) if m else None
        return self.dashboard


@contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    """`extra` in this process's environment for the block (the drill reading an s3:// RUN)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------- Ray state
def _state_errors() -> tuple[type[BaseException], ...]:
    from ray.util.state.exception import RayStateApiException

    return (RayStateApiException, OSError)  # the dashboard not up yet, or going down


def teacher_pids(address: str) -> dict[str, int]:
    """{teacher: pid} of the live TeacherActors (their repr names the teacher)."""
    from ray.util.state import list_actors

    try:
        actors = list_actors(
            address=address,
            filters=[("class_name", "=", "TeacherActor"), ("state", "=", "ALIVE")],
            detail=True,
            raise_on_missing_output=False,
        )
    except _state_errors():
        return {}
    out = {}
    for a in actors:
        m = re.fullmatch(r"TeacherActor\((\w+)\)", a.repr_name or "")
        if m and a.pid:
            out[m.group(1)] = int(a.pid)
    return out


def map_task_pids(address: str) -> list[int]:
    """Worker pids of the running Ray Data map tasks."""
    from ray.util.state import list_tasks

    try:
        tasks = list_tasks(
            address=address, filters=[("state", "=", "RUNNING")], detail=True, raise_on_missing_output=False
        )
    except _state_errors():
        return []
    return [int(t.worker_pid) for t in tasks if "MapBatches" in (t.name or "") and t.worker_pid]


# ----------------------------------------------------------------------------------------- the RUN
def teacher_phase(layout: RunLayout, name: str) -> str:
    """Where teacher `name` is, from its files: starting, training, export or committed."""
    if storage.read_manifest(layout.teacher(name)) is not None:
        return "committed"
    if storage.list_files(layout.teacher_state(name, 1)):
        return "export"
    if storage.exists(layout.teacher_checkpoint(name)):
        return "training"
    return "starting"


def student_results(layout: RunLayout) -> dict[str, dict]:
    """{<method>-<model>: result} of the committed students."""
    out = {}
    for folder in storage.list_dirs(layout.students):
        m = storage.read_manifest(folder)
        if m is not None:
            out[folder.rsplit("/", 1)[-1]] = m["result"]
    return out


def leftover_files(run: str) -> list[str]:
    """Temporary files, consumed DKC inputs and Ray Train checkpoints its snapshot no longer lists."""
    fs, root = storage.resolve(run)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    out = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and (
            TMP_FILE.match(i.base_name)
            or (DKC_INPUT.match(i.base_name) and i.path.endswith(f"/dkc/{i.base_name}"))
        )
    ]
    for snap in (i.path for i in infos if i.base_name == RAY_TRAIN_SNAPSHOT):
        with fs.open_input_stream(snap) as f:
            kept = {c["checkpoint_dir_name"] for c in json.loads(f.read()).get("checkpoint_results", [])}
        experiment = snap.rpartition("/")[0]
        out += [
            i.path
            for i in infos
            if i.type == pafs.FileType.Directory
            and i.path.rpartition("/")[0] == experiment
            and i.base_name.startswith("checkpoint_")
            and i.base_name not in kept
        ]
    return sorted(out)


def committed_checkpoints(layout: RunLayout) -> int:
    """Ray Train checkpoints committed so far by the students' trainings (their snapshot files)."""
    n = 0
    for folder in storage.list_dirs(layout.students):
        for experiment in storage.list_dirs(layout.student_ray(folder)):
            path = storage.join(experiment, RAY_TRAIN_SNAPSHOT)
            if storage.exists(path):
                n += len(storage.read_json(path).get("checkpoint_results", []))
    return n


def report_rows(run: str) -> list[dict]:
    return storage.read_json(RunLayout(run).report_json)["rows"]


def compare_rows(base: list[dict], got: list[dict], student_atol: float) -> tuple[bool, float, list[str]]:
    """(equal, largest difference (None when a value is missing or NaN), what differs): teachers and the
    ensemble bit for bit, students within `student_atol`."""

    def keyed(rows: list[dict]) -> dict[tuple, dict]:
        return {(r["method"], r["student"], r["split"]): r for r in rows}

    a, b = keyed(base), keyed(got)
    diffs = [f"row {k} only in one run" for k in sorted(set(a) ^ set(b))]
    worst: float | None = 0.0
    for k in sorted(set(a) & set(b)):
        tol = 0.0 if k[1] == "-" else student_atol
        for metric in sorted(set(a[k]) - {"method", "student", "split"}):
            d = abs(float(a[k][metric]) - float(b[k].get(metric, float("nan"))))
            worst = None if worst is None or d != d else max(worst, d)
            if not d <= tol:
                diffs.append(f"{k} {metric}: {a[k][metric]!r} -> {b[k].get(metric)!r}")
    return not diffs, worst, diffs


# ------------------------------------------------------------------------------------------ the drill
class Drill:
    """Runs pipelines, injects faults, checks what each left.

    Args:
        work: a folder of its own (RUNs, logs, each run's Ray temp dir).
        overrides: ``key=value`` for every pipeline (after ``--smoke``).
        student_atol: allowed absolute difference of a student's metrics.
        timeout_s: limit of one pipeline run.
    """

    def __init__(self, work: Path, overrides: list[str], student_atol: float, timeout_s: float) -> None:
        self.work, self.overrides = work, list(overrides)
        self.student_atol, self.timeout_s = student_atol, timeout_s
        self.base_run = ""
        self.base_rows: list[dict] = []
        self.teachers: list[str] = []
        self.launches: list[Launch] = []
        self.notes: list[str] = []  # what the drill did that the fault did not ask for (Ray restarts)
        (work / "logs").mkdir(parents=True, exist_ok=True)
        (work / "runs").mkdir(exist_ok=True)

    # ---------------------------------------------------------------- runs
    def launch(
        self, name: str, run: str, *, spec: dict | None = None, extra=(), env: dict | None = None
    ) -> Launch:
        """Starts ``jobs/pipeline.py --smoke --run RUN`` (with `spec`: the child entry with one fault)."""
        n = len(self.launches) + 1
        ray_tmp = self.work / f"r{n}"  # short: Ray's unix sockets live under it
        ray_tmp.mkdir()
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        environment = {
            **os.environ,
            "RAY_TMPDIR": str(ray_tmp),
            "RAY_AUTH_MODE": "disabled",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": path,
            **(env or {}),
        }
        environment.pop("RAY_ADDRESS", None)  # a local Ray of its own, never a cluster the caller uses
        job = ["--smoke", "--run", run, *self.overrides, *extra]
        entry = ["-m", CHILD, json.dumps(spec)] if spec else [str(REPO / "jobs" / "pipeline.py")]
        for attempt in range(1, RAY_START_ATTEMPTS + 1):
            log_path = self.work / "logs" / f"{n:02d}-{name}-{attempt}.log"
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, *entry, *job],
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    start_new_session=True,
                )
            launch = Launch(name, proc, log_path)
            self.launches.append(launch)
            log(STAGE, f"{name}: pid {proc.pid}, log {log_path}")
            while launch.alive() and RAY_STARTED not in launch.text():
                if time.monotonic() - launch.t0 > self.timeout_s:
                    return launch  # `finish` ends it and reports the time limit
                time.sleep(0.2)
            if launch.alive() or RAY_START_FAILED not in launch.text():
                return launch  # Ray is up (or the run failed for reasons of its own: `finish` reports them)
            # an overloaded machine: Ray gives its raylet a fixed 30 s to register; not the fault's doing
            self.notes.append(f"{name}: Ray did not start (attempt {attempt}), started again")
            launch.proc.wait()
            self.end_session(launch.sid, 5.0)
        return launch

    def finish(self, launch: Launch, r: dict) -> int:
        """Waits for `launch`; its session's processes still alive after a grace period are leftovers
        (recorded in `r`, then ended). Past the time limit the whole session is ended."""
        try:
            rc = launch.proc.wait(timeout=max(1.0, self.timeout_s - (time.monotonic() - launch.t0)))
        except subprocess.TimeoutExpired:
            r["errors"].append(f"{launch.name}: still running after {self.timeout_s:.0f}s")
            kill(launch.proc.pid)
            launch.proc.wait()
            self.end_session(launch.sid, 0.0)
            return -signal.SIGKILL
        r["leftovers"] += [f"process {p} after {launch.name}: {c}" for p, c in self.end_session(launch.sid)]
        log(STAGE, f"{launch.name}: exit {rc} after {time.monotonic() - launch.t0:.0f}s")
        return rc

    def kill_driver(self, launch: Launch) -> list[str]:
        """SIGKILLs the driver alone, as a crash would; returns what of its Ray outlived it (ended here)."""
        kill(launch.proc.pid)
        launch.proc.wait()
        return [f"{p}: {c}" for p, c in self.end_session(launch.sid, 20.0)]

    def end_session(self, sid: int, grace_s: float = 30.0) -> list[tuple[int, str]]:
        """Waits up to `grace_s` for session `sid` to empty, then SIGKILLs what is left; returns it."""
        deadline = time.monotonic() + grace_s
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p, cmdline(p)) for p in session_pids(sid)]
        for p, _ in left:
            kill(p)
        return left

    def wait_until(self, launch: Launch, what: str, probe: Callable[[], object], timeout_s: float = 600.0):
        """Polls `probe` until it returns something true (returned); Missed if the run ends first."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = probe()
            if got:
                return got
            if not launch.alive():
                raise Missed(f"{launch.name} ended (exit {launch.proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise Missed(f"no {what} within {timeout_s:.0f}s")
            time.sleep(0.05)

    def fresh(self, name: str, stages: tuple[str, ...] = ()) -> str:
        """A new local RUN holding copies of the undisturbed run's `stages`."""
        run = str(self.work / "runs" / name)
        for stage in stages:
            shutil.copytree(RunLayout(self.base_run).stage(stage), RunLayout(run).stage(stage))
        return run

    # -------------------------------------------------------------- checks
    def settle(self, run: str, r: dict) -> None:
        """Compares the report's rows with the undisturbed run's and lists what RUN still holds that it
        should not."""
        try:
            equal, worst, diffs = compare_rows(self.base_rows, report_rows(run), self.student_atol)
        except (OSError, KeyError, ValueError) as e:
            equal, worst, diffs = False, None, [f"no report: {type(e).__name__}: {e}"]
        r.update(rows_equal=equal, max_abs_diff=worst)
        if diffs:
            r["details"]["row_diffs"] = diffs[:8]
        r["leftovers"] += [f"file {p}" for p in leftover_files(run)]

    def baseline(self, run: str | None) -> dict:
        """The undisturbed run (or `run`, one made earlier with the same overrides) and its checks."""
        t0 = time.monotonic()
        r = {"run": run, "rc": None, "rows": 0, "leftovers": [], "errors": []}
        if run is None:
            run = r["run"] = self.fresh("baseline")
            r["rc"] = self.finish(self.launch("baseline", run), r)
            if r["rc"] != 0:
                r["errors"].append(f"the undisturbed run failed (exit {r['rc']}): nothing to compare with")
                return r
        self.base_run = run
        self.base_rows = report_rows(run)
        self.teachers = list(storage.read_manifest(RunLayout(run).teachers)["names"])
        r["leftovers"] += [f"file {p}" for p in leftover_files(run)]
        r.update(rows=len(self.base_rows), notes=self.notes, wall_s=round(time.monotonic() - t0, 1))
        self.notes = []
        return r
