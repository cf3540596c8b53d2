"""The teacher training loop: epochs, validation every few epochs, early stopping, snapshots, resume.

Pure torch; no Ray. An epoch is the model's `fit_epoch`: Adam steps over its batches for the
gradient-trained models (lazy, row-wise ones on tables with sparse gradients: models/rowwise.py), a
solver step for a model that fits itself (ALS, item-kNN). Protocol (METHOD.md §1): evaluate on
**valid** every `eval_every` epochs, keep the best valid R@50, stop after `patience` evaluations
without improvement or at `max_epochs`. A snapshot (weights only) is saved every `snapshot_every`
epochs -- every evaluated epoch has one, so the best epoch C does -- and a checkpoint (weights,
optimiser, early-stopping state) at the same epochs. Each epoch draws its batches from an RNG seeded
by (seed, epoch), so a run resumed from a checkpoint continues exactly as the uninterrupted run would
have.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.errors import TrainingDiverged
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.rowwise import RowwiseAdam
from hetcomp_dist.progress import log, peak_rss_gib
from hetcomp_dist.teachers.trajectory import prunable_snapshots


@dataclass(frozen=True)
class FitParams:
    """Resolved training settings of one teacher (shared values + its overrides)."""

    lr: float
    batch_size: int
    max_epochs: int
    eval_every: int
    snapshot_every: int
    patience: int
    seed: int


def resolve(cfg: TeachersConfig, name: str) -> tuple[FitParams, TeachersConfig]:
    """(FitParams, the model's TeachersConfig with its l2 and dim overrides applied) for teacher `name`."""
    o = getattr(cfg, name)
    params = FitParams(
        lr=o.lr or cfg.lr,
        batch_size=o.batch_size or cfg.batch_size,
        max_epochs=o.max_epochs or cfg.max_epochs,
        eval_every=o.eval_every or cfg.eval_every,
        snapshot_every=o.snapshot_every or cfg.snapshot_every,
        patience=cfg.patience,
        seed=cfg.seed,
    )
    model_cfg = dataclasses.replace(cfg, l2=o.l2 if o.l2 >= 0 else cfg.l2, dim=o.dim or cfg.dim)
    return params, model_cfg


def _save_torch(path: str, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes_atomic(path, buf.getvalue())


def _fresh_state(cfg_hash: str) -> dict:
    return {
        "config_hash": cfg_hash,
        "epoch": 0,
        "best": -1.0,
        "best_epoch": 0,
        "bad": 0,
        "history": [],
        "snapshots": [],
        "train_s": 0.0,
        "eval_s": 0.0,
        "resumed_from": [],
        "done": False,
        "stop": "",
    }


def load_checkpoint(path: str, cfg_hash: str) -> dict | None:
    """The checkpoint file `path` when it was written under `cfg_hash` (else None).

    A checkpoint is only a cache of the teacher's training: one that does not load (torn, overwritten)
    is reported and ignored, so the teacher starts from scratch. Errors reading storage still raise.
    """
    if not storage.exists(path):
        return None
    blob = storage.read_bytes(path)
    try:
        ck = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        state = json.loads(ck["state"])
        written_under = state.get("config_hash")
    except Exception as e:  # torch.load of damaged bytes raises nearly any type (IndexError, KeyError, ...)
        reason = (str(e).strip().splitlines() or [""])[0][:120]
        log("teachers", f"checkpoint {path} is unreadable ({type(e).__name__}: {reason}): starting afresh")
        return None
    return ck if written_under == cfg_hash else None


def fit(
    model: Recommender,
    train: CSR,
    layout: RunLayout,
    name: str,
    params: FitParams,
    evaluate: Callable[[Recommender], dict],
    cfg_hash: str,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Trains `model` with early stopping on valid R@50, resuming from teacher `name`'s checkpoint.

    Args:
        model: a fresh Recommender (its weights are replaced by the checkpoint's when resuming).
        train: the full train lists.
        layout: the run's layout (its checkpoint and snapshots go to the teacher's work folder).
        name: the teacher (its folder; the label of the progress lines).
        params: resolved settings.
        evaluate: model -> valid metrics {"R@50", ...} (valid only: the test split is never seen here).
        cfg_hash: written into the checkpoint; a checkpoint of another config is ignored.
        on_progress: called with a small status dict after every epoch.

    Returns:
        {"best_epoch", "best_valid", "history", "snapshots", "epochs", "train_s", "eval_s",
         "resumed_from", "stop"}; the model holds the last epoch's weights. When the only evaluation
        would fall on the last epoch (max_epochs = eval_every, the scale config's case), it is not made:
        that epoch is the best whatever it scores, and the export evaluates it anyway; best_valid is then
        -1 and the last history entry's "valid" None, for the caller to fill from the export.
    """
    trainable = model.optimizer_parameters()
    # fused Adam: one kernel per parameter instead of one per tensor op, for big item tables on CPU;
    # tables with sparse gradients (teachers.sparse_updates) take lazy row-wise steps instead
    opt = RowwiseAdam(trainable, lr=params.lr, fused=True) if trainable else None
    ck = load_checkpoint(layout.teacher_checkpoint(name), cfg_hash)
    if ck is not None:
        state = json.loads(ck["state"])
        model.load_state_dict(ck["model"])
        if opt is not None:
            opt.load_state_dict(ck["optim"])
        if not state["done"]:
            state["resumed_from"].append(state["epoch"])
            log(f"teacher {name}", f"resuming from the checkpoint of epoch {state['epoch']}")
    else:
        state = _fresh_state(cfg_hash)
    t_epoch = time.perf_counter()
    epoch = state["epoch"]
    prune: list[int] = []
    while not state["done"]:
        epoch += 1
        model.train()
        rng = np.random.default_rng([params.seed, epoch])
        torch.manual_seed(params.seed * 1_000_003 + epoch)
        t0 = time.perf_counter()
        loss = model.fit_epoch(train, rng, params.batch_size, opt)
        # before this epoch's snapshot or checkpoint: a rerun never resumes from the diverged weights
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"teacher {name}", epoch, loss, f"lower teachers.{name}.lr (now {params.lr:g})"
            )
        state["train_s"] += time.perf_counter() - t0
        state["epoch"] = epoch
        status = {"epoch": epoch, "loss": loss}
        snap = epoch % params.snapshot_every == 0
        if snap:
            _save_torch(layout.teacher_snapshot(name, epoch), model.state_dict())
            state["snapshots"].append(epoch)
        if epoch % params.eval_every == 0:
            if epoch >= params.max_epochs and not state["history"]:
                # the training's only evaluation, at its last epoch, cannot change which epoch is best
                # (this one), and the export evaluates this very state on valid and test: it is left to
                # the export (best_valid -1 until then; the caller fills it and this history entry's "valid")
                state.update(best_epoch=epoch, bad=0)
                state["history"].append({"epoch": epoch, "loss": status["loss"], "valid": None})
                log(f"teacher {name}", f"epoch {epoch} loss {status['loss']:.4f}: valid R@50 from the export")
            else:
                t1 = time.perf_counter()
                metrics = evaluate(model)
                state["eval_s"] += time.perf_counter() - t1
                r50 = float(metrics["R@50"])
                if r50 > state["best"]:
                    state.update(best=r50, best_epoch=epoch, bad=0)
                else:
                    state["bad"] += 1
                state["history"].append({"epoch": epoch, "loss": status["loss"], "valid": metrics})
                status["valid_R@50"] = r50
                rate = params.eval_every / max(time.perf_counter() - t_epoch, 1e-9)
                t_epoch = time.perf_counter()
                log(
                    f"teacher {name}",
                    f"epoch {epoch} loss {status['loss']:.4f} valid R@50 {r50:.4f} "
                    f"(best {state['best']:.4f} @ {state['best_epoch']}) {rate:.2f} epochs/s",
                )
                if state["bad"] >= params.patience:
                    state.update(done=True, stop="early")
            # forget snapshots no choice of E1..E4 can pick; their files go once the checkpoint
            # no longer lists them (a crash in between leaves an orphan file, never a dangling entry)
            prune = prunable_snapshots(state["snapshots"], state["best_epoch"])
            state["snapshots"] = [e for e in state["snapshots"] if e not in prune]
        if epoch >= params.max_epochs and not state["done"]:
            state.update(done=True, stop="max_epochs")
        if state["done"] and state["best_epoch"] == 0:
            raise RuntimeError(f"teacher {name}: no evaluation in {epoch} epochs (max_epochs < eval_every?)")
        if snap or state["done"]:
            _save_torch(
                layout.teacher_checkpoint(name),
                {
                    "model": model.state_dict(),
                    "optim": opt.state_dict() if opt is not None else {},
                    "state": json.dumps(state),
                },
            )
            for e in prune:
                remove_file(layout.teacher_snapshot(name, e))
            prune = []
        if on_progress is not None:
            on_progress(
                {
                    **status,
                    # None while it waits for the export (the only evaluation, deferred)
                    "best_valid_R@50": state["best"] if state["best"] >= 0 else None,
                    "best_epoch": state["best_epoch"],
                    "train_s": state["train_s"],
                    "eval_s": state["eval_s"],
                    "pid": os.getpid(),
                    "peak_rss_gib": peak_rss_gib(),
                    "done": state["done"],
                }
            )
    return {
        "best_epoch": state["best_epoch"],
        "best_valid": state["best"],
        "history": state["history"],
        "snapshots": state["snapshots"],
        "epochs": state["epoch"],
        "train_s": state["train_s"],
        "eval_s": state["eval_s"],
        "resumed_from": state["resumed_from"],
        "stop": state["stop"],
    }


def remove_file(path: str) -> None:
    """Deletes `path` if it exists: a stage redone after a crash may find it deleted already."""
    fs, p = storage.resolve(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass
