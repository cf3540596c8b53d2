"""Fault injection for the student's recovery tests and fault drills, through `student.hooks.TrainHooks`.

`KillOnce` kills (or fails) one Train worker once, at one point of the loop: the start of an epoch,
a step mid-epoch, or just before rank 0 builds a DKC round. `Stall` holds the training once at the
start of an epoch, so a drill can disturb it from outside at a known point (kill the driver between
two checkpoints). A marker file makes each fire only once across the restarts and reruns that follow.
They are module-level classes, so the hooks travel to the Train workers by reference (cloudpickle)
and the workers import this module.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from hetcomp_dist.student.hooks import TrainHooks

WHERE = ("epoch_start", "step", "dkc_start")
MODES = ("kill", "raise")


@dataclass(frozen=True)
class KillOnce:
    """SIGKILLs (mode "kill") or fails (mode "raise") worker `rank` once, at `where` of `epoch`.

    Before a kill it waits until the last reported checkpoint is committed by the Train controller:
    a report still queued when a worker dies is lost, and the group would then restart from the one
    before -- correct, but not the path a test means to exercise. Mode "raise" is for local mode
    (``student.num_workers = 0``), where the loop runs in the caller's process.

    Args:
        rank: the world rank that fails.
        epoch: the epoch (1-based) it fails in.
        marker: a file created when it fires; while it exists, nothing fires.
        where: "epoch_start", "step" (before step `step` of `epoch`) or "dkc_start" (after the
            evaluation of `epoch`, before rank 0 builds the DKC round).
        mode: "kill" (SIGKILL this process) or "raise" (RuntimeError "injected failure at epoch E, WHERE").
        step: the step (1-based) of `where="step"`.
    """

    rank: int
    epoch: int
    marker: str
    where: str = "epoch_start"
    mode: str = "kill"
    step: int = 1

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise ValueError(f"where={self.where!r}: one of {WHERE}")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: one of {MODES}")

    def hooks(self) -> TrainHooks:
        """The `TrainHooks` that call this at `where`."""
        return TrainHooks(**{self.where: self})

    def __call__(self, rank: int, epoch: int, step: int | None = None) -> None:
        if rank != self.rank or epoch != self.epoch or (self.where == "step" and step != self.step):
            return
        if os.path.exists(self.marker):
            return
        if self.mode == "raise":
            open(self.marker, "w").close()
            at = f"step {step}" if self.where == "step" else self.where
            raise RuntimeError(f"injected failure at epoch {epoch}, {at}")
        import ray.train

        ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
        open(self.marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Stall:
    """Holds worker `rank` for `seconds` once, at the start of `epoch`, after the last reported
    checkpoint is committed; the other ranks wait at the epoch's first collective.

    Args:
        rank: the world rank that stalls.
        epoch: the epoch (1-based) whose start it holds.
        marker: a file created when the stall begins (a drill's signal); while it exists, nothing stalls.
        seconds: how long it holds.
    """

    rank: int
    epoch: int
    marker: str
    seconds: float = 300.0

    def hooks(self) -> TrainHooks:
        """The `TrainHooks` that call this at each epoch's start."""
        return TrainHooks(epoch_start=self)

    def __call__(self, rank: int, epoch: int) -> None:
        if rank != self.rank or epoch != self.epoch or os.path.exists(self.marker):
            return
        import ray.train

        ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
        open(self.marker, "w").close()
        time.sleep(self.seconds)
