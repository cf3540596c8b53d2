"""The helpers behind `train_loop.train_loop_per_worker`: setup, one epoch, evaluation, DKC,
checkpoints and the rank-0 side effects. Everything here runs inside a Ray Train worker (or the
driver in local mode); collectives are called by every rank in the same order.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import Config, StudentConfig, from_dict, student_lr
from hetcomp_dist.knowledge.rounds import dkc_round
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.registry import build_student
from hetcomp_dist.models.rowwise import RowwiseAdam
from hetcomp_dist.models.students import count_parameters
from hetcomp_dist.objectives.base import TrainTask
from hetcomp_dist.objectives.registry import build_objective, model_config
from hetcomp_dist.progress import log, peak_rss_gib
from hetcomp_dist.student import checkpoint, distributed, knowledge_io
from hetcomp_dist.student.batching import BatchSampler, RankData
from hetcomp_dist.student.hooks import TrainHooks
from hetcomp_dist.student.rank_eval import range_sums, reduce_means

STAGE = "student"


# ------------------------------------------------------------------------------------ the job
@dataclass
class Job:
    """What the driver hands every worker (it crosses the TorchTrainer boundary, cloudpickled: the
    functions travel by reference, so they must be importable on the workers)."""

    run: str
    cfg: Config
    out: str  # the student folder: RUN/student/<method>-<model> or a λ grid's candidate
    dkc_fn: Callable[..., dict] = dkc_round  # builds DKC round r from the student's embeddings
    hooks: TrainHooks = TrainHooks()  # the caller's callables at fixed points of the loop
    local_ckpt: str = ""  # local mode (no Train checkpoints): the checkpoint file kept by the trainer
    stop_at: int = 0  # > 0: pause after this epoch's evaluation (a λ grid's pruning rung); a rerun resumes

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        return cls(
            run=d["run"],
            cfg=from_dict(Config, d["cfg"]),
            out=d["out"],
            dkc_fn=d.get("dkc_fn") or dkc_round,
            hooks=d.get("hooks") or TrainHooks(),
            local_ckpt=d.get("local_ckpt", ""),
            stop_at=int(d.get("stop_at", 0)),
        )

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run)

    @property
    def rounds(self) -> str:
        """Where this student keeps its DKC rounds r >= 1: they follow its own rankings, so two students
        on one run (side by side or one after the other) never share them."""
        return self.layout.student_rounds(self.out)


@dataclass
class Worker:
    rank: int
    world: int
    device: torch.device

    @classmethod
    def setup(cls, cfg: Config) -> Worker:
        import faiss
        import numba
        import ray.train

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        s = cfg.student
        # Fractional-CPU workers get OMP_NUM_THREADS=1 from Ray; set threads deliberately.
        threads = s.threads_per_worker or max(1, int(s.cpus_per_worker))
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        # the compiled kernels too: rank 0 runs the DKC rounds in-process, where a larger numba pool
        # would compete with the ranks' torch threads
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if s.use_gpu:
            from ray.train.torch import get_device

            device = get_device()
        else:
            device = torch.device("cpu")
        return cls(rank, world, device)


class RankZero:
    """The one place for rank-0 side effects: progress lines and files under the student dir."""

    def __init__(self, rank: int, job: Job) -> None:
        self.on, self.layout, self.out = rank == 0, job.layout, job.out

    def log(self, msg: str) -> None:
        if self.on:
            log(STAGE, msg)

    def metrics(self, history: list[dict]) -> None:
        """metrics.jsonl, rewritten whole (atomic; object stores cannot append)."""
        if self.on:
            text = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
            storage.write_bytes_atomic(self.layout.student_metrics(self.out), text.encode())

    def embeddings(self, user: np.ndarray, item: np.ndarray, meta: dict) -> None:
        if self.on:
            storage.write_npz_atomic(self.layout.student_embeddings(self.out), user=user, item=item)
            storage.write_json_atomic(self.layout.student_summary(self.out), meta)


# ------------------------------------------------------------------------------- loop state
@dataclass
class LoopState:
    """Early stopping and history; saved in every checkpoint."""

    epoch: int = 0
    best_valid: float = -1.0
    best_epoch: int = 0
    best: dict = field(default_factory=dict)  # {"valid": {...}, "test": {...}} of the best evaluation
    bad_evals: int = 0
    stopped: bool = False
    switch_epoch: int = 0
    lr_drops: list = field(default_factory=list)  # epochs at which a plateau lowered the learning rate
    resumed_from: list = field(default_factory=list)  # epochs of the checkpoints restarts resumed from
    history: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build(job: Job, w: Worker):
    """(rank data, task, sampler, optimiser) with identical initial weights on every rank."""
    cfg, s = job.cfg, job.cfg.student
    data = RankData.load(job.run, w.rank, w.world)
    torch.manual_seed(s.seed)
    model = build_student(s.model, data.n_users, data.n_items, model_config(cfg))
    task = TrainTask(model, build_objective(s.method, cfg)).to(w.device)
    task.objective.attach(job.run, data)
    sampler = BatchSampler(
        data, s.batch_size, w.rank, w.world, s.seed, task.objective.needs_negatives, w.device
    )
    # Adam; lazy and row-wise on the user table when its gradient is sparse (student.sparse_updates)
    opt = RowwiseAdam(task.parameters(), lr=student_lr(s), weight_decay=s.weight_decay)
    return data, task, sampler, opt


def resume(
    job: Job, task: TrainTask, opt: torch.optim.Optimizer, data: RankData
) -> tuple[LoopState, dict | None]:
    """Restores the last committed checkpoint (if any) and loads the objective's knowledge round.

    Returns:
        (loop state, best embeddings {"user", "item"} or None).
    """
    import ray.train

    loop, best_emb = LoopState(), None
    ckpt, payload = ray.train.get_checkpoint(), None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            payload = checkpoint.load(d)
    elif job.local_ckpt:
        payload = checkpoint.load_file(job.local_ckpt)
    if payload is not None:
        checkpoint.restore(task, opt, payload)
        loop = LoopState(**payload["loop"])
        loop.resumed_from.append(loop.epoch)
        task.objective.load_state(payload["objective"])
        best_emb = payload.get("best_emb")
        best_emb = {k: v.numpy() for k, v in best_emb.items()} if best_emb else None
    if task.objective.needs_knowledge:
        r = max(task.objective.state().get("round", 0), 0)
        load_knowledge(job, task, data, r)
    return loop, best_emb


def load_knowledge(job: Job, task: TrainTask, data: RankData, round_idx: int) -> None:
    targets, pos = knowledge_io.load_round(job.run, round_idx, data.lo, data.hi, job.rounds)
    task.objective.set_knowledge(
        round_idx, knowledge_io.round_manifest(job.run, round_idx, job.rounds), targets, pos
    )


# --------------------------------------------------------------------------------- training
def train_epoch(
    net: torch.nn.Module,
    task: TrainTask,
    opt: torch.optim.Optimizer,
    sampler: BatchSampler,
    epoch: int,
    comm: distributed.CommStats,
    hooks: TrainHooks,
) -> float:
    """One epoch; returns the mean per-step loss summed over ranks (one all-reduce per epoch)."""
    task.train()
    task.objective.start_epoch(epoch)
    total = torch.zeros((), dtype=torch.float64, device=sampler.device)
    for step, batch in enumerate(sampler.epoch(epoch), 1):
        if hooks.step is not None:
            hooks.step(sampler.rank, epoch, step)
        loss = net(batch)
        opt.zero_grad(set_to_none=False)
        loss.backward()  # DDP all-reduces (sums) item-side gradients here; user rows stay local
        opt.step()
        task.model.after_step()
        total += loss.detach()
        comm.steps += 1
    return float(distributed.all_reduce_(total)) / sampler.steps


@torch.no_grad()
def retrieval_vectors(
    task: TrainTask, data: RankData, full: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(this rank's user vectors (hi-lo, d), item vectors, all users' vectors or None).

    `full` gathers every rank's rows (a collective; needed for DKC and the best-model snapshot).
    """
    task.eval()
    m, dev = task.model, next(task.parameters()).device
    own = m.user_vectors(torch.arange(data.lo, data.hi, device=dev))
    items = m.item_vectors()
    everyone = None
    if full:
        t = torch.zeros(data.n_users, own.shape[1], dtype=torch.float32, device=dev)
        t[data.lo : data.hi] = torch.from_numpy(own).to(dev)
        everyone = distributed.gather_rows(t, data.lo, data.hi).cpu().numpy()
    return own, items, everyone


def drop_lr(
    loop: LoopState, opt: torch.optim.Optimizer, s: StudentConfig, final_phase: bool, epoch: int
) -> bool:
    """On a plateau (`patience` evaluations without a better valid R@50): lowers the learning rate by
    `student.lr_drop_factor` and restarts the patience count, when drops are left (`student.lr_drops`)
    and the objective is in its last phase. Returns whether it did (else the training stops).

    Every rank sees the same all-reduced metrics, so every rank takes the same decision.
    """
    if not final_phase or len(loop.lr_drops) >= s.lr_drops:
        return False
    for group in opt.param_groups:
        group["lr"] *= s.lr_drop_factor
    loop.lr_drops.append(epoch)
    loop.bad_evals = 0
    return True


def evaluate(
    task: TrainTask,
    opt: torch.optim.Optimizer,
    data: RankData,
    loop: LoopState,
    epoch: int,
    job: Job,
    device: torch.device,
) -> tuple[dict, bool, np.ndarray | None, np.ndarray]:
    """Validation + test metrics (identical on all ranks) and the early-stopping bookkeeping
    (`drop_lr` on a plateau where the config allows, else a stop).

    Returns:
        (metrics, improved, all users' vectors when improved or DKC is due else None, item vectors).
    """
    s = job.cfg.student
    need_full_before = task.objective.dkc_due(epoch)
    own, items, _ = retrieval_vectors(task, data, full=False)
    sums = range_sums(job.run, own, data.lo, data.n_users, items, task.model.metric, job.cfg.eval)
    metrics = reduce_means(sums, job.cfg.eval.ks, device)
    improved = metrics["valid"]["R@50"] > loop.best_valid
    if improved:
        loop.best_valid, loop.best_epoch, loop.best, loop.bad_evals = (
            metrics["valid"]["R@50"],
            epoch,
            metrics,
            0,
        )
    else:
        loop.bad_evals += 1
    loop.stopped = epoch >= s.max_epochs or (
        loop.bad_evals >= s.patience and not drop_lr(loop, opt, s, task.objective.final_phase(), epoch)
    )
    everyone = retrieval_vectors(task, data, full=True)[2] if (improved or need_full_before) else None
    return metrics, improved, everyone, items


def dkc(
    job: Job, task: TrainTask, data: RankData, epoch: int, users: np.ndarray, items: np.ndarray, r0: RankZero
) -> float:
    """One DKC round: rank 0 writes the embeddings and calls the knowledge stage; all load targets."""
    t0 = time.perf_counter()
    r = task.objective.state()["round"] + 1
    if r0.on:
        path = job.layout.student_dkc_embeddings(job.out, r)
        storage.write_npz_atomic(path, user=users, item=items)
        job.dkc_fn(job.run, job.cfg, r, epoch, path, task.model.metric, rounds=job.rounds)
        fs, inner = storage.resolve(path)
        fs.delete_file(inner)  # consumed: the committed round is what later epochs (and resumes) read
    distributed.barrier()  # the round is committed before anyone reads it
    load_knowledge(job, task, data, r)
    return time.perf_counter() - t0


def report(
    task: TrainTask,
    opt: torch.optim.Optimizer,
    loop: LoopState,
    data: RankData,
    best_emb: dict | None,
    metrics: dict,
    rank: int,
    local_ckpt: str = "",
) -> None:
    """Checkpoint through Ray Train: every rank gathers and reports (a barrier); rank 0 writes (and,
    in local mode, also keeps the checkpoint at `local_ckpt`)."""
    import ray.train

    payload = checkpoint.capture(task, opt, data.lo, data.hi)
    flat = {"epoch": loop.epoch, "valid_R@50": metrics["valid"]["R@50"], "best_valid_R@50": loop.best_valid}
    if rank != 0:
        ray.train.report(flat, checkpoint=None)
        return
    best = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in best_emb.items()} if best_emb else None
    payload.update(loop=loop.to_dict(), objective=task.objective.state(), best_emb=best)
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(d, payload)
        ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(d))
    if local_ckpt:
        checkpoint.save_file(local_ckpt, payload)


def epoch_line(epoch: int, loss: float, seconds: float, task: TrainTask) -> dict:
    return {
        "epoch": epoch,
        "loss": loss,
        "epoch_s": round(seconds, 4),
        **task.objective.log_fields(),
        "peak_rss_gib": round(peak_rss_gib(), 3),
    }


def summary(
    loop: LoopState,
    task: TrainTask,
    comm: distributed.CommStats,
    sampler: BatchSampler,
    wall_s: float,
    w: Worker,
    paused: bool = False,
) -> dict:
    return {
        "best_epoch": loop.best_epoch,
        "valid": loop.best.get("valid", {}),
        "test": loop.best.get("test", {}),
        "epochs": loop.epoch,
        "paused": paused,
        "switch_epoch": loop.switch_epoch,
        "lr_drops": list(loop.lr_drops),
        "resumed_from": list(loop.resumed_from),
        "train_wall_s": round(wall_s, 2),
        "steps_per_epoch": sampler.steps,
        "world_size": w.world,
        "allreduce_bytes_per_step": comm.per_step(),
        "allreduce_buckets": comm.buckets,
        "n_params": count_parameters(task.model),
        "metric": task.model.metric,
        "model": task.model.__class__.__name__,
    }
