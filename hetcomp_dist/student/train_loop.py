"""The per-worker train function run by Ray Train's TorchTrainer (one screen; helpers in worker.py).

Each rank trains its own users' rows and shares only item-side gradients; every `eval_every`
epochs all ranks evaluate their users, agree on early stopping, run a DKC round (HetComp, until
the switch) and checkpoint. A restarted worker group resumes from the last checkpoint. The caller's
`hooks.TrainHooks` run at the start of each epoch, before each step and before each DKC round.
"""

from __future__ import annotations

import math
import time

from hetcomp_dist import allocator
from hetcomp_dist.resources import this_node
from hetcomp_dist.student import distributed, worker


def train_loop_per_worker(config: dict) -> dict:
    job = worker.Job.from_dict(config)
    if job.cfg.pipeline.keep_freed_memory and job.cfg.student.num_workers > 0:
        allocator.keep_freed_memory()  # a Train worker's own process (num_workers 0 runs in the caller's)
    s, w = job.cfg.student, worker.Worker.setup(job.cfg)
    nodes = distributed.all_gather(this_node())  # where each rank runs, for the summary (model.json)
    r0 = worker.RankZero(w.rank, job)
    data, task, sampler, opt = worker.build(job, w)
    net, comm = distributed.wrap(task, task.rank_local_names(), w.device)  # user rows stay local
    loop, best_emb = worker.resume(job, task, opt, data)
    r0.log(
        f"{s.method}-{s.model}: {w.world} worker(s), {sampler.steps} steps/epoch, "
        f"from epoch {loop.epoch + 1}, {task.objective.log_fields()}"
    )
    t_start = time.perf_counter()
    last = (
        min(s.max_epochs, job.stop_at) if job.stop_at > 0 else s.max_epochs
    )  # stop_at: a multiple of eval_every
    while not loop.stopped and loop.epoch < last:
        epoch = loop.epoch + 1
        if job.hooks.epoch_start is not None:
            job.hooks.epoch_start(w.rank, epoch)
        t0 = time.perf_counter()
        loss = worker.train_epoch(net, task, opt, sampler, epoch, comm, job.hooks)
        if not math.isfinite(loss):  # all-reduced: every rank stops here alike, before any checkpoint
            # returned, not raised: Ray Train retries a raising loop (student.max_failures) from its last
            # checkpoint, where it would diverge again; the driver raises TrainingDiverged from this
            return {"diverged": {"epoch": epoch, "loss": loss}}
        line = worker.epoch_line(epoch, loss, time.perf_counter() - t0, task)
        loop.epoch = epoch
        if epoch % s.eval_every == 0 or epoch == s.max_epochs:
            metrics, improved, users, items = worker.evaluate(task, opt, data, loop, epoch, job, w.device)
            task.objective.after_evaluation(epoch, metrics)
            if loop.lr_drops[-1:] == [epoch]:
                r0.log(f"valid R@50 flat for {s.patience} evaluations: lr {opt.param_groups[0]['lr']:.3g}")
            if improved:  # keep the best model's embeddings (rank 0 writes them at the end)
                best_emb = {"user": users, "item": items} if w.rank == 0 else None
            if task.objective.dkc_due(epoch) and not loop.stopped:
                if job.hooks.dkc_start is not None:
                    job.hooks.dkc_start(w.rank, epoch)
                seconds = worker.dkc(job, task, data, epoch, users, items, r0)
                line["dkc"] = {"s": round(seconds, 3), **task.objective.log_fields()}  # the new round's state
                loop.switch_epoch = loop.switch_epoch or (epoch if task.objective.state()["switched"] else 0)
            line.update(metrics, improved=improved)
            loop.history.append(line)
            worker.report(
                task, opt, loop, data, best_emb, metrics, w.rank, job.local_ckpt
            )  # a barrier on all ranks
            r0.metrics(loop.history)
        else:
            loop.history.append(line)
        r0.log(
            f"epoch {epoch} loss {loss:.4f} ({line['epoch_s']:.2f}s)"
            + (
                f" valid R@50 {line['valid']['R@50']:.4f} best {loop.best_valid:.4f}@{loop.best_epoch}"
                f" {task.objective.log_fields()}"
                if "valid" in line
                else ""
            )
        )
    paused = not loop.stopped and loop.epoch < s.max_epochs  # at stop_at: the checkpoint resumes it
    result = worker.summary(loop, task, comm, sampler, time.perf_counter() - t_start, w, paused)
    result["worker_nodes"] = nodes
    if best_emb is not None and not paused:
        r0.embeddings(best_emb["user"], best_emb["item"], result)
    return result
