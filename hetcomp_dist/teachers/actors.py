"""Thin Ray orchestration: one actor per teacher, trained concurrently, progress on one board.

Each `TeacherActor` runs `runner.run_teacher` (train -> export -> commit) for one teacher with
fractional CPUs (and GPUs: `resources.teacher_gpus`). `max_restarts` brings a killed
actor back; `max_task_retries` re-runs its `train` call, which resumes from the teacher's last
checkpoint on storage. A `ProgressBoard` actor collects each teacher's status so the driver can
print one table while they train; it restarts like the teachers, and a board lost for good only
loses the progress lines (the driver waits on the teachers' own results).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray

from hetcomp_dist import storage
from hetcomp_dist.config import Config, to_dict
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import log
from hetcomp_dist.resources import cluster_view, teacher_gpus


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest status per teacher (epoch, loss, valid R@50, pid, ...), pushed by the teacher actors."""

    def __init__(self) -> None:
        self.status: dict[str, dict] = {}

    def update(self, name: str, status: dict) -> None:
        self.status[name] = {**self.status.get(name, {}), **status, "t": time.time()}

    def snapshot(self) -> dict[str, dict]:
        return self.status


@ray.remote
class TeacherActor:
    """Trains and exports one teacher. Constructor arguments are small (a path, the config)."""

    def __init__(self, run: str, cfg: Config, name: str, board, device: str) -> None:
        self.run, self.cfg, self.name, self.board, self.device = run, cfg, name, board, device

    def __repr__(self) -> str:  # names the teacher in Ray's log prefixes and its state API (repr_name)
        return f"TeacherActor({self.name})"

    def train(self) -> dict:
        import os

        from hetcomp_dist import allocator
        from hetcomp_dist.teachers.runner import run_teacher

        if self.cfg.pipeline.keep_freed_memory:
            allocator.keep_freed_memory()  # this actor's own process
        self.board.update.remote(self.name, {"phase": "starting", "pid": os.getpid()})

        def push(status: dict) -> None:
            self.board.update.remote(self.name, {"phase": "training", **status})

        manifest = run_teacher(self.run, self.cfg, self.name, self.device, push)
        self.board.update.remote(self.name, {"phase": "done", "done": True})
        return manifest


@dataclass
class TeacherGroup:
    """Running teacher actors: `wait` prints progress until all are done and returns manifests."""

    actors: dict[str, ray.actor.ActorHandle]
    refs: dict[str, ray.ObjectRef]
    board: ray.actor.ActorHandle
    every_s: float
    t0: float = field(default_factory=time.perf_counter)
    board_lost: bool = False

    def status(self) -> dict[str, dict]:
        """The board's latest status per teacher; {} once the board is gone for good (no progress lines)."""
        if self.board_lost:
            return {}
        try:
            return ray.get(self.board.snapshot.remote())
        except ray.exceptions.RayError as e:
            self.board_lost = True
            log("teachers", f"progress board lost ({type(e).__name__}): training goes on without progress")
            return {}

    def print_status(self) -> None:
        """One line per teacher: phase, epoch, loss, last and best valid R@50, epochs/s, memory."""
        status = self.status()
        lines = [f"{time.perf_counter() - self.t0:.0f}s"]
        for name in self.actors:
            s = status.get(name, {})
            busy = s.get("train_s", 0.0) + s.get("eval_s", 0.0)
            rate = f"{s.get('epoch', 0) / busy:.2f}" if busy > 0 else "-"
            last = f"{s['valid_R@50']:.4f}" if "valid_R@50" in s else "-"
            best = "-"
            if s.get("best_epoch"):
                value = s.get("best_valid_R@50")
                best = f"{value:.4f}@{s['best_epoch']}" if value is not None else f"export@{s['best_epoch']}"
            loss = f"{s['loss']:.4f}" if "loss" in s else "-"
            lines.append(
                f"  {name:<4} {s.get('phase', 'queued'):<9} epoch {s.get('epoch', 0):>4}  loss {loss:>9}  "
                f"valid R@50 {last:>6} best {best:>11}  {rate:>5} epochs/s  "
                f"rss {s.get('peak_rss_gib', 0):.2f}G"
            )
        log("teachers", "\n".join(lines))

    def wait(self) -> dict[str, dict]:
        """Blocks until every teacher finished; raises after all ended if any failed for good."""
        pending = {ref: name for name, ref in self.refs.items()}
        results, errors = {}, {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.every_s)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    results[name] = ray.get(ref)
                except ray.exceptions.RayError as e:  # keep waiting for the others, report at the end
                    errors[name] = e
                    log("teachers", f"teacher {name} failed: {failure_reason(e)}")
                ray.kill(self.actors[name])  # free its CPU share and memory for the others now
            if not ready:
                self.print_status()
        self.print_status()
        ray.kill(self.board)
        if errors:
            raise RuntimeError(
                "teachers failed: " + "; ".join(f"{n} ({failure_reason(e)})" for n, e in errors.items())
            ) from next(iter(errors.values()))
        return results


def failure_reason(e: Exception) -> str:
    """'Type: message' (first line) of why a teacher's task failed: the exception raised in the actor (a
    diverged training names its fix there), not Ray's wrapper, whose first line is the task's name and pid."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def start_teachers(run: str, cfg: Config, names: list[str]) -> TeacherGroup:
    """Starts one actor per teacher in `names` (Ray must be initialised) and their `train` calls."""
    board = ProgressBoard.options(
        max_restarts=cfg.teachers.max_restarts, max_task_retries=cfg.teachers.max_restarts
    ).remote()
    gpus = teacher_gpus(cfg.teachers, len(names), cluster_view())
    device = "cuda" if gpus > 0 else "cpu"
    actors, refs = {}, {}
    for name in names:
        actor = TeacherActor.options(
            num_cpus=cfg.teachers.num_cpus,
            num_gpus=gpus,
            max_restarts=cfg.teachers.max_restarts,
            max_task_retries=cfg.teachers.max_restarts,
        ).remote(run, cfg, name, board, device)
        actors[name] = actor
        refs[name] = actor.train.remote()
    log(
        "teachers",
        f"started {len(names)} actors ({cfg.teachers.num_cpus} CPU, {gpus} GPU each): {', '.join(names)}",
    )
    return TeacherGroup(actors, refs, board, cfg.teachers.progress_every_s)


def ensure_ray() -> None:
    """Joins the cluster when there is one (inside a Ray job), else starts a local one."""
    if not ray.is_initialized():
        ray.init(configure_logging=False)


def train_teachers(run: str, cfg: Config) -> dict:
    """Trains every built-in teacher of `cfg.teachers.names` on `run` concurrently; skips committed ones
    and the teachers imported into the run (`teachers.imported`), which are taken as they are.

    Checks the input first (the data stage, the names), so a bad run fails before any actor starts.
    Holds RUN's lease (`hetcomp_dist.lease`) throughout; the actors write under it.

    Returns:
        {"teachers": {name: {"valid", "test", "state_epochs", "convergence_epoch", "wall_s"}},
         "trained": [names trained now], "wall_s": seconds}; also written (with the config hash) to
        ``RUN/teachers/_manifest.json``.
    """
    with RunLease(run, cfg.pipeline):
        return _train_teachers(run, cfg)


def _train_teachers(run: str, cfg: Config) -> dict:
    from hetcomp_dist.data.dataset import load_manifest
    from hetcomp_dist.models.registry import model_class
    from hetcomp_dist.teachers.imported import builtin_teachers, imported_manifest
    from hetcomp_dist.teachers.runner import teacher_hash

    t0 = time.perf_counter()
    data = load_manifest(run)
    layout = RunLayout(run)
    names = list(cfg.teachers.names)
    builtin = [n for n in names if n in builtin_teachers()]
    imported = {n: imported_manifest(run, n, data) for n in names if n not in builtin}
    for name in builtin:
        model_class(name, cfg.teachers)
    storage.ensure_folder(layout.teachers)
    hashes = {n: teacher_hash(cfg, n, data["config_hash"]) for n in builtin}
    todo = [n for n in builtin if storage.stage_is_done(layout.teacher(n), hashes[n]) is None]
    if todo:
        ensure_ray()
        start_teachers(run, cfg, todo).wait()
    else:
        log("teachers", f"all {len(names)} teachers are up to date; skipping")
    out = {}
    for n in names:
        m = imported[n] if n in imported else storage.stage_is_done(layout.teacher(n), hashes[n])
        if m is None:
            raise RuntimeError(f"teacher {n} finished without committing {layout.teacher(n)}")
        hashes[n] = m["config_hash"]
        out[n] = {k: m[k] for k in ("valid", "test", "state_epochs", "convergence_epoch", "wall_s")}
    summary = {"teachers": out, "trained": todo, "wall_s": time.perf_counter() - t0}
    storage.write_manifest(
        layout.teachers,
        {"config_hash": storage.config_hash(hashes), "names": names, "K": cfg.teachers.topk, **summary},
        to_dict(cfg),
    )
    return summary
