"""The student's side of the knowledge stage: reading rounds and running DKC from the trainer.

Layout (`RunLayout`): ``RUN/knowledge/pos/shard-*.parquet`` (`items` = P+) and
``RUN/knowledge/round=0/shard-*.parquet`` (`targets` = T_u from the E1 states), shared by every
student; a student's DKC rounds r >= 1 follow its own rankings and live in its folder,
``RUN/student/<method>-<model>/knowledge/round=<r>/``; each round's ``_manifest.json`` holds
``means`` and ``switch``. Building rounds (round 0, DKC) is the knowledge stage's job
(`hetcomp_dist.knowledge.rounds`); the trainer only calls it through `dkc_function`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout

DKC_FN = "hetcomp_dist.knowledge.rounds:dkc_round"
ROUND0_FN = "hetcomp_dist.knowledge.rounds:build_round0"


def round_manifest(run: str, round_idx: int, rounds: str | None = None) -> dict | None:
    """The committed manifest of a round, or None."""
    return storage.read_manifest(RunLayout(run).round(round_idx, rounds))


def load_round(
    run: str, round_idx: int, lo: int, hi: int, rounds: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Targets (hi-lo, K) and P+ (hi-lo, pos_k) int32, -1 padded, of users [lo, hi) for a committed round
    (the knowledge stage's `load_targets`, with the student's error message when it is missing)."""
    from hetcomp_dist.knowledge.rounds import load_targets

    if round_manifest(run, round_idx, rounds) is None:
        raise InputError(
            RunLayout(run).round(round_idx, rounds),
            "knowledge round not committed (no _manifest.json)",
            "run the knowledge stage (`hetcomp-dist knowledge --run RUN`) first",
        )
    return load_targets(run, round_idx, lo, hi, rounds)


def resolve(spec: str) -> Callable:
    """A function from ``"package.module:function"`` (how the trainer is told which DKC to run)."""
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise InputError(
            spec, f"cannot load the function ({e})", "check the knowledge stage is installed"
        ) from e
