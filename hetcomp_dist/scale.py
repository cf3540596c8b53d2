"""The scale bench's sizes, checks and cost exponent (``jobs/bench_scale.py``), as pure functions.

Sizes: synthetic data of `users` users and ``users // USERS_PER_ITEM`` items (100k items at 1M users),
the rest of the settings from the scale config (``hetcomp_dist/configs/scale.yaml``). A config that cannot
run on a size -- a shard above its users, a batch larger than its data -- is an `InputError` naming the
field, before anything runs.
"""

from __future__ import annotations

import math

from hetcomp_dist.config import Config
from hetcomp_dist.errors import InputError

USERS_PER_ITEM = 10  # 100k items at 1M users, proportionally fewer below
# what a teacher's `batch_size` counts (config.TeacherTraining); item-kNN has no batches
BATCH_UNITS = {
    "mf": "interactions",
    "ml": "interactions",
    "dnn": "interactions",
    "gnn": "interactions",
    "ae": "users",
    "als": "users",
    "iae": "items",
}


def items_for(users: int) -> int:
    """The catalogue of a size: users // USERS_PER_ITEM."""
    return max(1, users // USERS_PER_ITEM)


def train_interactions(cfg: Config) -> int:
    """The synthetic data's expected train interactions: users x mean activity x the train share."""
    d, s = cfg.data, cfg.synth
    return int(s.users * s.mean_interactions * (1.0 - d.test_frac - d.valid_frac))


def check_fits(cfg: Config, where: str = "config") -> None:
    """Raises InputError (naming the field, the size and the fix) when `cfg` cannot run on its synthetic
    size (``synth.users`` x ``synth.items``): a shard size above the users, or a teacher's or the
    student's batch larger than what it batches (train interactions, users or items)."""
    users, items = cfg.synth.users, cfg.synth.items
    size = f"the {users:,}-user size"
    if cfg.data.shard_size > users:
        raise InputError(
            f"{where}.data.shard_size",
            f"{cfg.data.shard_size:,} users per shard is above the {users:,} users of {size}",
            "lower data.shard_size (the bench needs several shards per size) or drop the size",
        )
    have = {"interactions": train_interactions(cfg), "users": users, "items": items}
    t = cfg.teachers
    for name in t.names:
        unit = BATCH_UNITS.get(name)
        own = getattr(t, name, None)
        batch = (own.batch_size if own is not None else 0) or t.batch_size
        if unit is not None and batch > have[unit]:
            field = (
                f"teachers.{name}.batch_size" if own is not None and own.batch_size else "teachers.batch_size"
            )
            raise InputError(
                f"{where}.{field}",
                f"a batch of {batch:,} {unit} is larger than the {have[unit]:,} {unit} of {size}",
                "lower it or drop the size",
            )
    if cfg.student.batch_size > have["interactions"]:
        raise InputError(
            f"{where}.student.batch_size",
            f"a batch of {cfg.student.batch_size:,} interactions is larger than the "
            f"{have['interactions']:,} train interactions of {size}",
            "lower it or drop the size",
        )


def exponent(users: list[int], values: list[float]) -> float | None:
    """b of value ∝ users^b: the least-squares slope of log(value) on log(users) over the sizes given;
    None with fewer than two distinct sizes or a value that is not > 0."""
    pts = [(math.log(u), math.log(v)) for u, v in zip(users, values) if v is not None and v > 0]
    if len({x for x, _ in pts}) < 2 or len(pts) < len(users):
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
