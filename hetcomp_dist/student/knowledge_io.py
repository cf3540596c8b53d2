"""The student's side of the knowledge stage: reading rounds and running DKC from the trainer.

Layout (BRIEF.md): ``RUN/knowledge/pos/shard-*.parquet`` (`items` = P+) and
``RUN/knowledge/round=<r>/shard-*.parquet`` (`targets` = T_u) with ``round=<r>/_manifest.json``
holding ``means`` and ``switch``. Building rounds (round 0, DKC) is the knowledge stage's job
(`hetcomp_dist.knowledge.rounds`); the trainer only calls it through `dkc_function`.
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.errors import InputError

DKC_FN = "hetcomp_dist.knowledge.rounds:dkc_round"
ROUND0_FN = "hetcomp_dist.knowledge.rounds:build_round0"


def knowledge_dir(run: str) -> str:
    return storage.join(run, "knowledge")


def round_dir(run: str, round_idx: int) -> str:
    return storage.join(knowledge_dir(run), f"round={round_idx}")


def round_manifest(run: str, round_idx: int) -> dict | None:
    """The committed manifest of a round, or None."""
    return storage.read_manifest(round_dir(run, round_idx))


def load_round(run: str, round_idx: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets (hi-lo, K) and P+ (hi-lo, pos_k) int32, -1 padded, of users [lo, hi) for a committed round
    (the knowledge stage's `load_targets`, with the student's error message when it is missing)."""
    from hetcomp_dist.knowledge.rounds import load_targets

    if round_manifest(run, round_idx) is None:
        raise InputError(round_dir(run, round_idx), "knowledge round not committed (no _manifest.json)",
                         "run the knowledge stage (`hetcomp-dist knowledge --run RUN`) first")
    return load_targets(run, round_idx, lo, hi)


def resolve(spec: str) -> Callable:
    """A function from ``"package.module:function"`` (how the trainer is told which DKC to run)."""
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise InputError(spec, f"cannot load the function ({e})", "check the knowledge stage is installed") from e
