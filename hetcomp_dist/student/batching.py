"""A Train worker's share of the data and its per-step batches.

Rank r of W owns the contiguous users [n·r/W, n·(r+1)/W). It reads only the shards that overlap
its range and, each step, draws its share of the global batch (batch_size/W train interactions)
from its own users' interactions, so a user's rows are only ever touched by one rank. Every rank
runs the same number of steps per epoch (DDP needs equal collectives): ceil(n_train / batch_size),
cycling through fresh permutations of its interactions when its range holds fewer than its share.
Randomness is a pure function of (seed, rank, epoch), so an epoch redone after a restart draws the
same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.data.dataset import CSR, load_manifest, load_range
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.sampling import PairIndex, sample_negatives
from hetcomp_dist.objectives.base import Batch


def user_range(rank: int, world: int, n_users: int) -> tuple[int, int]:
    """Users [lo, hi) of rank `rank` among `world` ranks (contiguous, sizes differ by at most one)."""
    return n_users * rank // world, n_users * (rank + 1) // world


@dataclass
class RankData:
    """Users [lo, hi) of one rank: train/valid/test lists and catalogue sizes."""

    lo: int
    hi: int
    n_users: int
    n_items: int
    n_train: int  # train interactions over all users (sets the steps per epoch)
    train: CSR
    valid: CSR
    test: CSR

    @classmethod
    def load(cls, run: str, rank: int, world: int) -> RankData:
        m = load_manifest(run)
        if m["n_users"] < world:
            raise InputError(
                storage.manifest_path(RunLayout(run).data),
                f"{m['n_users']} users for {world} training workers",
                "use fewer workers (student.num_workers)",
            )
        lo, hi = user_range(rank, world, m["n_users"])
        parts = {s: load_range(run, s, lo, hi, m) for s in ("train", "valid", "test")}
        return cls(lo, hi, m["n_users"], m["n_items"], int(m["n_train"]), **parts)


class BatchSampler:
    """Per-step batches of one rank (see the module docstring).

    Args:
        data: the rank's users.
        global_batch: train interactions per step over all ranks (1,024).
        rank, world: this rank and the number of ranks.
        seed: run seed.
        negatives: also draw one unobserved item per interaction (base losses).
        device: where the batch tensors go.
    """

    def __init__(
        self,
        data: RankData,
        global_batch: int,
        rank: int,
        world: int,
        seed: int,
        negatives: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        self.data, self.global_batch, self.rank, self.seed = data, global_batch, rank, seed
        self.local_batch = global_batch // world + (rank < global_batch % world)
        self.steps = max(1, math.ceil(data.n_train / global_batch))
        self.users = data.train.user_ids()
        self.items = data.train.items.astype(np.int64)
        if len(self.items) == 0:
            raise InputError(
                f"users [{data.lo}, {data.hi})",
                "this worker's users have no train interactions",
                "use fewer workers",
            )
        self.keys = PairIndex(data.train) if negatives else None
        self.device = torch.device(device)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The `steps` batches of epoch `epoch` (deterministic in seed, rank, epoch)."""
        rng = np.random.default_rng([self.seed, self.rank, epoch])
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        need, nnz = self.steps * self.local_batch, len(self.items)
        order = np.concatenate([rng.permutation(nnz) for _ in range(-(-need // nnz))])[:need]
        for k in range(self.steps):
            yield self.make_batch(order[k * self.local_batch : (k + 1) * self.local_batch], rng, gen)

    def make_batch(
        self, idx: np.ndarray, rng: np.random.Generator, gen: torch.Generator | None = None
    ) -> Batch:
        """The `Batch` of interactions `idx` (positions in this rank's train interactions)."""
        u, i = self.users[idx], self.items[idx]
        users = np.unique(u)
        rows = users - self.data.lo
        sub = self.data.train.take(rows)
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(self.device)  # noqa: E731
        neg = (
            sample_negatives(self.keys, u, self.data.n_items, rng, 1)[:, 0] if self.keys is not None else None
        )
        return Batch(
            users=t(users),
            rows=t(rows),
            inter_users=t(u),
            inter_items=t(i),
            neg_items=t(neg) if neg is not None else None,
            train_rows=t(np.repeat(np.arange(len(users)), sub.lengths())),
            train_items=t(sub.items),
            global_batch=self.global_batch,
            generator=gen,
        )
