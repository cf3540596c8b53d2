"""The student's side of the knowledge stage: where its rounds live, and reading them.

Layout (`RunLayout`): ``RUN/knowledge/pos/shard-*.parquet`` (`items` = P+) and
``RUN/knowledge/round=0/shard-*.parquet`` (`targets` = T_u from the E1 states), shared by every
student; a student's DKC rounds r >= 1 follow its own rankings and live in its folder,
``RUN/student/<method>-<model>/knowledge/round=<r>/``; each round's ``_manifest.json`` holds
``means`` and ``switch``. Building rounds (round 0, DKC) is the knowledge stage's job
(`hetcomp_dist.knowledge.rounds`); the trainer calls its `build_round0` and, through the callable it
is given (``dkc_fn``, `dkc_round` by default), its DKC rounds.
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout


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
