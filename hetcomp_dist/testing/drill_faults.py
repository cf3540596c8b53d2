"""Fault drills: the smoke pipeline once undisturbed, then once under each injected fault, each on a
fresh copy of what it needs (``jobs/drill_faults.py`` is the command; its docstring lists the faults).

Faults come from outside where Ray's state API or the RUN's files say when -- a teacher actor, a Ray
Data task, the driver -- and from inside where they cannot: a Train worker (`faults.KillOnce` and
`faults.Stall` through the pipeline's `TrainHooks`) and a write that fails half-way, both through this
module's child entry ``python -m hetcomp_dist.testing.drill_faults SPEC JOB-ARGS...`` (the pipeline job
plus the fault SPEC describes).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from hetcomp_dist import storage
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log
from hetcomp_dist.testing.drill import (
    STAGE,
    TMP_FILE,
    Drill,
    Missed,
    cmdline,
    committed_checkpoints,
    environ,
    kill,
    leftover_files,
    map_task_pids,
    student_results,
    teacher_phase,
    teacher_pids,
)

WRITE_TARGET = "knowledge/round=0/shard-00001.parquet"  # write_local's shard: written by the driver


def new_result(name: str) -> dict:
    return {
        "fault": name,
        "survived": False,
        "rows_equal": False,
        "max_abs_diff": None,
        "rc": None,
        "checks": {},
        "details": {},
        "leftovers": [],
        "errors": [],
    }


def _kill_actor(d: Drill, r: dict, name: str, phase: str) -> str:
    """Starts the teachers on a fresh copy of the data and SIGKILLs the first TeacherActor seen in
    `phase` ("training" or "export"), its pid from Ray's state API; returns the RUN."""
    run = d.fresh(name, ("data",))
    layout = RunLayout(run)
    launch = d.launch(name, run)
    pids: dict[str, int] = {}
    seen = [0.0]

    def target() -> str | None:
        if time.monotonic() - seen[0] > 1.0 and launch.state_api():  # the state API is slow: 1/s
            pids.update(teacher_pids(launch.state_api()))
            seen[0] = time.monotonic()
        return next((t for t in d.teachers if t in pids and teacher_phase(layout, t) == phase), None)

    teacher = d.wait_until(launch, f"a teacher actor in {phase}", target)
    pid = pids[teacher]
    if "TeacherActor" not in cmdline(pid):
        raise Missed(f"teacher {teacher}'s actor (pid {pid}) is gone before the kill")
    kill(pid)
    r["details"].update(teacher=teacher, pid=pid, phase_at_kill=teacher_phase(layout, teacher))
    r["rc"] = d.finish(launch, r)
    return run


def teacher_train(d: Drill, r: dict) -> None:
    run = _kill_actor(d, r, "teacher_train", "training")
    resumed = storage.read_json(RunLayout(run).teacher_metrics(r["details"]["teacher"]))["resumed_from"]
    r["details"]["resumed_from"] = resumed
    r["checks"]["the restarted actor resumed training from its checkpoint"] = bool(resumed)
    d.settle(run, r)


def teacher_export(d: Drill, r: dict) -> None:
    run = _kill_actor(d, r, "teacher_export", "export")
    resumed = storage.read_json(RunLayout(run).teacher_metrics(r["details"]["teacher"]))["resumed_from"]
    r["checks"]["the restarted actor redid the export, not the training"] = resumed == []
    d.settle(run, r)


def knowledge_task(d: Drill, r: dict) -> None:
    run = d.fresh("knowledge_task", ("data", "teachers"))
    layout = RunLayout(run)
    launch = d.launch("knowledge_task", run, extra=["knowledge.distributed_min_users=1"])

    def task_pids() -> list[int]:
        if storage.read_manifest(layout.round(0)) is not None:
            raise Missed("round 0 was committed before a task was seen")
        return map_task_pids(launch.state_api()) if launch.state_api() else []

    pid = d.wait_until(launch, "a running round-0 map task", task_pids)[0]
    r["details"].update(pid=pid, cmdline=cmdline(pid))
    kill(pid)
    r["rc"] = d.finish(launch, r)
    m = storage.read_manifest(layout.round(0)) or {}
    r["checks"]["round 0 ran as Ray Data tasks and was committed"] = m.get("distributed") is True
    d.settle(run, r)


def _kill_train_worker(d: Drill, r: dict, name: str, kill_spec: dict) -> dict:
    run = d.fresh(name, ("data", "teachers", "knowledge"))
    marker = d.work / f"{name}.fired"
    r["details"]["kill"] = kill_spec
    r["rc"] = d.finish(d.launch(name, run, spec={"kill": {**kill_spec, "marker": str(marker)}}), r)
    r["checks"]["the worker was killed"] = marker.exists()
    d.settle(run, r)
    return student_results(RunLayout(run))


def train_worker_step(d: Drill, r: dict) -> None:
    results = _kill_train_worker(
        d, r, "train_worker_step", {"rank": 1, "epoch": 3, "where": "step", "step": 2}
    )
    resumed = {k: v.get("resumed_from") for k, v in results.items()}
    r["details"]["resumed_from"] = resumed
    r["checks"]["the worker group resumed from the last checkpoint"] = any(resumed.values())


def train_worker_dkc(d: Drill, r: dict) -> None:
    _kill_train_worker(d, r, "train_worker_dkc", {"rank": 0, "epoch": 2, "where": "dkc_start"})


def _kill_driver_mid_training(d: Drill, r: dict, name: str) -> tuple[str, RunLayout]:
    """A fresh run (data only) whose driver is killed once a teacher is training; (run, its layout)."""
    run = d.fresh(name, ("data",))
    layout = RunLayout(run)
    launch = d.launch(name, run)
    d.wait_until(
        launch,
        "a teacher mid-training",
        lambda: any(teacher_phase(layout, t) == "training" for t in d.teachers),
    )
    r["details"]["ended_with_the_driver"] = d.kill_driver(launch)
    return run, layout


def driver_teachers(d: Drill, r: dict) -> None:
    run, layout = _kill_driver_mid_training(d, r, "driver_teachers")
    training = [t for t in d.teachers if teacher_phase(layout, t) == "training"]
    r["details"]["phases_at_kill"] = {t: teacher_phase(layout, t) for t in d.teachers}
    r["rc"] = d.finish(d.launch("driver_teachers-rerun", run), r)
    resumed = {t: storage.read_json(layout.teacher_metrics(t))["resumed_from"] for t in training}
    r["details"]["resumed_from"] = resumed
    r["checks"]["the rerun resumed the interrupted teachers from their checkpoints"] = bool(resumed) and any(
        resumed.values()
    )
    d.settle(run, r)


def driver_student(d: Drill, r: dict) -> None:
    run = d.fresh("driver_student", ("data", "teachers", "knowledge"))
    layout = RunLayout(run)
    # epochs take milliseconds here: rank 0 holds epoch 3 once, so the driver dies between checkpoints
    marker = d.work / "driver_student.stalled"
    spec = {"stall": {"rank": 0, "epoch": 3, "marker": str(marker)}}
    launch = d.launch("driver_student", run, spec=spec)
    d.wait_until(
        launch,
        "a committed Ray Train checkpoint and the stall of epoch 3",
        lambda: marker.exists() and committed_checkpoints(layout) > 0,
    )
    r["details"]["ended_with_the_driver"] = d.kill_driver(launch)
    r["rc"] = d.finish(d.launch("driver_student-rerun", run, spec=spec), r)  # the same command
    resumed = {k: v.get("resumed_from") for k, v in student_results(layout).items()}
    r["details"]["resumed_from"] = resumed
    r["checks"]["the rerun resumed the training from its Ray Train checkpoint"] = any(resumed.values())
    d.settle(run, r)


def write_local(d: Drill, r: dict) -> None:
    run = d.fresh("write_local", ("data", "teachers"))
    first = d.launch("write_local", run, spec={"fail_write": WRITE_TARGET})
    rc = d.finish(first, r)
    r["details"].update(target=WRITE_TARGET, first_rc=rc)
    r["checks"]["the disturbed run failed with the injected error"] = (
        rc != 0 and "injected write failure" in first.text()
    )
    r["checks"]["the failed write left no temporary file"] = not any(
        TMP_FILE.match(p.rsplit("/", 1)[-1]) for p in leftover_files(run)
    )
    r["rc"] = d.finish(d.launch("write_local-rerun", run), r)
    d.settle(run, r)


def s3_500(d: Drill, r: dict) -> None:
    from hetcomp_dist.testing.flaky_s3 import FlakyS3

    with FlakyS3(every=7) as s3, environ(s3.environment()):
        run = f"s3://{s3.bucket}/runs/s3_500"
        rc = d.finish(d.launch("s3_500", run, env=s3.environment()), r)
        r["details"]["first_rc"] = rc
        if rc != 0:  # failing cleanly is allowed: the rerun must then succeed
            rc = d.finish(d.launch("s3_500-rerun", run, env=s3.environment()), r)
        r["rc"] = rc
        r["details"].update(puts=s3.layer.puts, injected_500s=s3.layer.failed)
        r["checks"]["PUTs failed with 500 during the run"] = s3.layer.failed > 0
        d.settle(run, r)


def corrupt_checkpoint(d: Drill, r: dict) -> None:
    run, layout = _kill_driver_mid_training(d, r, "corrupt_checkpoint")
    teacher = next(t for t in d.teachers if teacher_phase(layout, t) == "training")
    ckpt = layout.teacher_checkpoint(teacher)
    Path(ckpt).write_bytes(os.urandom(4096))
    r["details"].update(teacher=teacher, checkpoint=ckpt)
    rerun = d.launch("corrupt_checkpoint-rerun", run)
    r["rc"] = d.finish(rerun, r)
    r["checks"]["the rerun reported the unreadable checkpoint"] = (
        f"checkpoint {ckpt} is unreadable" in rerun.text()
    )
    resumed = storage.read_json(layout.teacher_metrics(teacher))["resumed_from"]
    r["checks"]["the teacher trained from scratch"] = resumed == []
    d.settle(run, r)


FAULTS: dict[str, Callable[[Drill, dict], None]] = {
    "teacher_train": teacher_train,
    "teacher_export": teacher_export,
    "knowledge_task": knowledge_task,
    "train_worker_step": train_worker_step,
    "train_worker_dkc": train_worker_dkc,
    "driver_teachers": driver_teachers,
    "driver_student": driver_student,
    "write_local": write_local,
    "s3_500": s3_500,
    "corrupt_checkpoint": corrupt_checkpoint,
}


def run_drills(
    faults: list[str],
    overrides: list[str],
    *,
    baseline: str | None = None,
    work: str | None = None,
    keep: bool = False,
    student_atol: float = 0.0,
    timeout_s: float = 900.0,
) -> dict:
    """The undisturbed run, then each fault; returns the summary (see `jobs/drill_faults.py`)."""
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}: choose from {', '.join(FAULTS)}")
    t0 = time.monotonic()
    folder = Path(work) if work else Path(tempfile.mkdtemp(prefix="hcdrill-", dir="/tmp"))
    d = Drill(folder, overrides, student_atol, timeout_s)
    base = d.baseline(baseline)
    results = []
    if not base["errors"]:
        for name in faults:
            r = new_result(name)
            t1 = time.monotonic()
            try:
                FAULTS[name](d, r)
            except Missed as e:
                r["errors"].append(f"fault not injected: {e}")
            except Exception as e:  # one fault's failure is its result; the others still run
                r["errors"].append(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
            for launch in d.launches:  # a fault that failed half-way may have left its run going
                if launch.alive():
                    kill(launch.proc.pid)
                    launch.proc.wait()
                    r["errors"].append(f"{launch.name} was still running after the fault")
                    d.end_session(launch.sid, 0.0)
            if d.notes:
                r["details"]["notes"], d.notes = d.notes, []
            r["wall_s"] = round(time.monotonic() - t1, 1)
            r["survived"] = r["rc"] == 0 and not r["errors"] and all(r["checks"].values()) and r["rows_equal"]
            log(STAGE, f"{name}: {'survived' if r['survived'] else 'FAILED'} in {r['wall_s']:.0f}s")
            results.append(r)
    leftovers = base["leftovers"] + [x for r in results for x in r["leftovers"]]
    ok = not base["errors"] and all(r["survived"] for r in results) and not leftovers
    summary = {
        "faults_tried": len(results),
        "faults_survived": sum(r["survived"] for r in results),
        "rows_equal": bool(results) and all(r["rows_equal"] for r in results),
        "leftovers": leftovers,
        "student_atol": student_atol,
        "wall_s": round(time.monotonic() - t0, 1),
        "baseline": base,
        "faults": {r["fault"]: r for r in results},
    }
    if ok and not keep and not work:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        summary["work"] = str(folder)  # runs and logs, for a look
    return summary


# -------------------------------------------------------------------------------- the child entry
def fail_write_once(relpath: str) -> None:
    """Makes this process's first Parquet write of ``RUN/<relpath>`` fail half-way: half the rows go
    to the temporary file, then OSError."""
    import pyarrow.parquet as pq

    folder, _, name = relpath.rpartition("/")
    real = pq.write_table
    fired: list[str] = []

    def write_table(table, where, *args, **kwargs):
        head, _, base = str(where).rpartition("/")
        if not fired and head.endswith("/" + folder) and base.startswith(f".{name}.tmp-"):
            fired.append(str(where))
            real(table.slice(0, table.num_rows // 2), where, *args, **kwargs)
            raise OSError(f"injected write failure (fault drill) half-way through {where}")
        return real(table, where, *args, **kwargs)

    pq.write_table = write_table


def child(argv: list[str]) -> int:
    """``SPEC JOB-ARGS...``: the pipeline job with the fault SPEC describes: {"kill": KillOnce's
    arguments}, {"stall": Stall's arguments} or {"fail_write": a path relative to RUN}."""
    from hetcomp_dist.cli.jobs import run_job
    from hetcomp_dist.pipeline import run_pipeline
    from hetcomp_dist.testing.faults import KillOnce, Stall

    spec = json.loads(argv[0])
    hooks = None
    if "kill" in spec:
        hooks = KillOnce(**spec["kill"]).hooks()
    if "stall" in spec:
        hooks = Stall(**spec["stall"]).hooks()
    if "fail_write" in spec:
        fail_write_once(spec["fail_write"])

    def stage(cfg, args) -> str:
        run_pipeline(cfg, hooks=hooks)
        return RunLayout(cfg.run).report_json

    return run_job(
        stage, "The smoke pipeline with one injected fault (hetcomp_dist.testing.drill_faults).", argv[1:]
    )


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
