"""The baselines' teacher signal: each teacher's final-state (E4) top-K lists and their ensemble.

METHOD.md §4: every baseline distils rankings, never scores. The single-list baselines (RD, RRD,
CL-DRD, DCD) learn from the E4 ensemble top-K, i.e. the rank-importance ensemble g of
``RUN/teachers/<name>/state=4`` (the knowledge targets of the final states); MTD learns from the
per-teacher E4 lists. Reads are per user range [lo, hi), shard by shard, so a Train worker only
holds O((hi - lo) · M · K) ids.
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.data.dataset import load_manifest, read_lists
from hetcomp_dist.errors import InputError
from hetcomp_dist.knowledge.ensemble import ensemble_topk
from hetcomp_dist.knowledge.shard_io import state_dir

FINAL_STATE = 4


def check_teachers(run: str, names: tuple[str, ...] | list[str], state: int = FINAL_STATE) -> None:
    """A clear error, before any training, when a teacher's exported state is missing."""
    m = load_manifest(run)
    for name in names:
        first = storage.shard_path(state_dir(run, name, state), 0)
        if not storage.exists(first) or storage.read_manifest(storage.join(run, "teachers", name)) is None:
            raise InputError(
                state_dir(run, name, state),
                f"teacher {name!r} has no finished E{state} export",
                "run `hetcomp-dist teachers --run RUN` first (the baselines reuse its trajectories)",
            )
        n = storage.n_shards(m["n_users"], m["shard_size"])
        last = storage.shard_path(state_dir(run, name, state), n - 1)
        if not storage.exists(last):
            raise InputError(
                last,
                f"teacher {name!r}: E{state} export has fewer than {n} shards",
                "the teachers stage did not finish; rerun it",
            )


def teacher_lists(
    run: str,
    names: tuple[str, ...] | list[str],
    lo: int,
    hi: int,
    k: int,
    state: int = FINAL_STATE,
    manifest: dict | None = None,
) -> np.ndarray:
    """Each teacher's top-k unobserved items at `state` for users [lo, hi), reading only the shards
    that overlap the range.

    Returns:
        (hi - lo, M, k) int32 item ids, best first, -1 padded.
    """
    m = manifest or load_manifest(run)
    out = np.full((hi - lo, len(names), k), -1, dtype=np.int32)
    for x, name in enumerate(names):
        lists = read_lists(state_dir(run, name, state), "items", lo, hi, m)
        out[:, x] = storage.csr_to_dense(lists.offsets, lists.items, k)
    return out


def ensemble_targets(
    lists: np.ndarray,
    k: int,
    temperature: float = 10.0,
    weights: tuple[float, ...] | np.ndarray | None = None,
    block: int = 4096,
) -> np.ndarray:
    """The E4 ensemble top-k (g) of per-teacher lists (B, M, L), computed in user blocks → (B, k) int32."""
    w = np.asarray(weights, dtype=np.float64) if weights is not None and len(weights) else None
    parts = [ensemble_topk(lists[s : s + block], k, temperature, w) for s in range(0, len(lists), block)]
    return np.concatenate(parts) if parts else np.full((0, k), -1, dtype=np.int32)
