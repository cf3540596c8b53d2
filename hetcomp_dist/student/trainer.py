"""The student stage's driver: one Ray Train `TorchTrainer` run per (method, student).

Writes ``RUN/student/<method>-<model>/``: ``metrics.jsonl`` (one line per epoch: loss, epoch time,
DKC round and state means, valid/test metrics at evaluations), ``emb.npz`` (user, item: the best
evaluation's retrieval vectors) with ``model.json`` (the summary), Ray Train's checkpoints under
``_ray/``, and ``_manifest.json`` last. A finished stage with the same config is skipped; a crashed
driver's run resumes from its last checkpoint (same RunConfig name and storage path).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from functools import partial

import pyarrow.fs as pafs

from hetcomp_dist import storage
from hetcomp_dist.config import Config, student_lr, to_dict
from hetcomp_dist.data.dataset import load_manifest
from hetcomp_dist.errors import InputError, TrainingDiverged
from hetcomp_dist.knowledge.rounds import build_round0, dkc_round
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.objectives.registry import METHODS, model_config
from hetcomp_dist.progress import log
from hetcomp_dist.student import knowledge_io
from hetcomp_dist.student import lambda_grid as lambda_grid
from hetcomp_dist.student.hooks import TrainHooks
from hetcomp_dist.student.train_loop import train_loop_per_worker
from hetcomp_dist.student.worker import STAGE

# fields that change how fast a run goes, not what it computes
_MECHANICS = ("cpus_per_worker", "threads_per_worker", "max_failures", "tail_chunk", "tail_kernel")


def student_hash(run: str, cfg: Config) -> str:
    # the settings the model is built with (model_config: e.g. the ML clip HetComp does not train with)
    s = {k: v for k, v in dataclasses.asdict(model_config(cfg)).items() if k not in _MECHANICS}
    del s["method_lr"]  # the training's identity is the learning rate it uses, not the whole table
    s["lr"] = student_lr(cfg.student)
    # one training has one λ_KD: the grid says which trainings a search runs (lambda_grid.grid_hash)
    del s["lambda_grid"]
    del s["lambda_prune_epoch"]  # how the search spends its epochs, not what one training computes
    if not s["lr_drops"]:  # no drop: the factor is unused, and the hashes of trainings before the option hold
        del s["lr_drops"], s["lr_drop_factor"]
    parts = [s, cfg.eval, load_manifest(run).get("config_hash")]
    if METHODS[cfg.student.method].needs_knowledge:
        r0 = knowledge_io.round_manifest(run, 0) or {}
        parts += [cfg.knowledge, cfg.teachers.names, r0.get("config_hash")]
    parts += METHODS[cfg.student.method].hash_parts(run, cfg)
    return storage.config_hash(*parts)


def _ray_storage(layout: RunLayout, out: str) -> tuple[str, pafs.FileSystem | None]:
    """Ray Train's storage path and, on object storage, the filesystem every other stage writes through
    (`storage.resolve`: small files in one PutObject; Ray's own S3 filesystem would send its marker and
    checkpoints as multipart uploads, which S3-compatible stores such as moto may refuse)."""
    path = layout.student_ray(out)
    fs, inner = storage.resolve(path)
    return (inner, fs) if storage.is_uri(path) else (inner, None)


def train_student(
    run: str,
    cfg: Config,
    *,
    dkc_fn: Callable[..., dict] = dkc_round,
    hooks: TrainHooks | None = None,
    out: str | None = None,
    stop_at: int = 0,
    take_lease: bool = True,
) -> dict:
    """Trains `cfg.student.model` with `cfg.student.method` on RUN (TorchTrainer, DDP when num_workers > 1).

    Holds RUN's lease (`hetcomp_dist.lease`) throughout; the Train workers write under it.

    Args:
        run: the run root (local path or URI).
        cfg: the config; `student.num_workers = 0` trains in this process (Ray Train local mode).
        dkc_fn: builds each DKC round, with `knowledge.rounds.dkc_round`'s signature (the default);
            it travels to the Train workers cloudpickled (a module-level function by reference).
        hooks: callables run on every rank at fixed points of the loop (`student.hooks`); a λ grid
            runs them in each of its trainings.
        out: the folder to train into (default RUN/student/<method>-<model>; the λ_KD grid's candidates).
        stop_at: > 0 (a multiple of ``student.eval_every``): pause after that epoch's evaluation and
            checkpoint, without committing the stage; a later call resumes there (the λ grid's pruning).
        take_lease: False in a process whose driver holds RUN's lease for it (a sweep's Ray task,
            `student.sweep`); the trainings of a sweep run side by side in separate folders.

    Returns:
        {"best_epoch", "valid", "test", "wall_s", "dir", "paused", ...} (valid/test: R@10, N@10, R@50,
        N@50; paused: stopped at `stop_at` before early stopping, so not finished).
    """
    if not take_lease:
        return _train_student(run, cfg, dkc_fn=dkc_fn, hooks=hooks, out=out, stop_at=stop_at)
    with RunLease(run, cfg.pipeline):
        return _train_student(run, cfg, dkc_fn=dkc_fn, hooks=hooks, out=out, stop_at=stop_at)


def _train_student(
    run: str,
    cfg: Config,
    *,
    dkc_fn: Callable[..., dict],
    hooks: TrainHooks | None,
    out: str | None,
    stop_at: int,
) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    s = cfg.student
    if s.method not in METHODS:
        raise InputError(
            "student.method", f"{s.method!r} has no objective here", f"choose {', '.join(METHODS)}"
        )
    load_manifest(run)  # a clear error before anything is written when there is no data stage
    if METHODS[s.method].needs_knowledge and knowledge_io.round_manifest(run, 0) is None:
        log(STAGE, "knowledge round 0 missing: building it")
        build_round0(run, cfg)
    if out is None and lambda_grid.needs_grid(cfg):  # a baseline without λ_KD: one training per grid value
        train_fn = partial(train_student, dkc_fn=dkc_fn, hooks=hooks)
        return lambda_grid.train_with_grid(run, cfg, train_fn, student_hash)
    if stop_at < 0 or stop_at % s.eval_every:
        raise ValueError(f"stop_at={stop_at} must be 0 or a multiple of student.eval_every={s.eval_every}")
    layout = RunLayout(run)
    out = out or layout.student(s.method, s.model)
    h = student_hash(run, cfg)
    training = f"{s.method}-{s.model}-{h}"  # Ray Train's run name, and local mode's checkpoint file
    done = storage.stage_is_done(out, h)
    if done is not None:
        log(STAGE, f"{s.method}-{s.model}: finished earlier with this config, skipped")
        return done["result"]
    t0 = time.perf_counter()
    job = {
        "run": run,
        "cfg": to_dict(cfg),
        "out": out,
        "dkc_fn": dkc_fn,
        "hooks": hooks or TrainHooks(),
        "stop_at": stop_at,
        # local mode keeps no Train checkpoints: the loop keeps its own, per config, for a rerun
        "local_ckpt": "" if s.num_workers else layout.student_local_checkpoint(out, training),
    }
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    ray_path, ray_fs = _ray_storage(layout, out)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker=resources if s.num_workers else None,
        ),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name=training,
            storage_path=ray_path,
            storage_filesystem=ray_fs,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    log(
        STAGE,
        f"{s.method}-{s.model}: TorchTrainer with {s.num_workers} worker(s) "
        f"({'nccl' if s.use_gpu else 'gloo'})",
    )
    summary = trainer.fit().return_value
    if "diverged" in summary:  # a non-finite epoch loss (train_loop): nothing of it was committed
        lr, m = student_lr(s), s.method
        fix = f"lower the student's learning rate (now {lr:g}: student.lr, or student.method_lr=[{m}=...])"
        raise TrainingDiverged(f"student {s.method}-{s.model}", fix=fix, **summary["diverged"])
    result = {**summary, "wall_s": round(time.perf_counter() - t0, 2), "dir": out}
    if result.get("paused"):
        log(
            STAGE,
            f"{s.method}-{s.model}: paused after epoch {result['epochs']} (best valid R@50 "
            f"{result['valid'].get('R@50', float('nan')):.4f} at epoch {result['best_epoch']}); "
            "a rerun resumes",
        )
        return result
    storage.write_manifest(
        out,
        {"config_hash": h, "stage": STAGE, "method": s.method, "model": s.model, "result": result},
        to_dict(cfg),
    )
    log(
        STAGE,
        f"{s.method}-{s.model}: best epoch {result['best_epoch']}, test {result['test']} "
        f"in {result['wall_s']:.1f}s",
    )
    return result
