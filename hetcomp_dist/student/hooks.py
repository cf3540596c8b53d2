"""Hooks into the student's Train loop: callables run on every rank at fixed points of training.

They let a caller observe or disturb a training without the loop knowing why (progress probes,
fault drills in the tests). They cross the TorchTrainer boundary inside ``train_loop_config``, which
Ray pickles with cloudpickle: module-level functions and classes travel by reference (their module
must be importable on the workers), lambdas and closures by value.

Points, each called with the rank's world rank first:

- ``epoch_start(rank, epoch)``: before epoch `epoch` (1-based) trains, after any resume.
- ``step(rank, epoch, step)``: before optimiser step `step` (1-based) of `epoch`, mid-epoch.
- ``dkc_start(rank, epoch)``: after the evaluation of `epoch`, before rank 0 builds the DKC round
  (every rank calls it; the others then wait at the round's barrier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainHooks:
    """Optional callables of the Train loop (None: nothing is called at that point).

    Attributes:
        epoch_start: ``(rank, epoch) -> None`` before each epoch trains.
        step: ``(rank, epoch, step) -> None`` before each optimiser step.
        dkc_start: ``(rank, epoch) -> None`` before rank 0 builds a DKC round.
    """

    epoch_start: Callable[[int, int], None] | None = None
    step: Callable[[int, int, int], None] | None = None
    dkc_start: Callable[[int, int], None] | None = None
