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
from hetcomp_dist.data.dataset import CSR, data_dir, load_manifest
from hetcomp_dist.errors import InputError
from hetcomp_dist.teachers.common import interaction_keys, sample_negatives


@dataclass
class Batch:
    """One step's data on one rank (tensors on the training device).

    Attributes:
        users: (B,) int64 unique absolute user ids of the sampled interactions, sorted.
        rows: (B,) int64 the same users as rows of the rank's local arrays (user - lo).
        inter_users, inter_items: (n,) int64 the sampled train interactions.
        neg_items: (n,) int64 one sampled unobserved item per interaction, or None.
        train_rows, train_items: (nnz,) int64 every train pair of the batch users, as
            (row in 0..B-1, item).
        global_batch: interactions per step summed over ranks (the loss normaliser).
        generator: RNG on the training device for sampled terms.
    """

    users: torch.Tensor
    rows: torch.Tensor
    inter_users: torch.Tensor
    inter_items: torch.Tensor
    neg_items: torch.Tensor | None
    train_rows: torch.Tensor
    train_items: torch.Tensor
    global_batch: int
    generator: torch.Generator | None = None


def user_range(rank: int, world: int, n_users: int) -> tuple[int, int]:
    """Users [lo, hi) of rank `rank` among `world` ranks (contiguous, sizes differ by at most one)."""
    return n_users * rank // world, n_users * (rank + 1) // world


def read_lists(folder: str, column: str, lo: int, hi: int, manifest: dict) -> CSR:
    """A list column of users [lo, hi) from a folder of user-range shards, reading only the shards
    that overlap the range (any per-user dataset of the run: data splits, knowledge rounds)."""
    S, n = manifest["shard_size"], manifest["n_users"]
    lengths, items = [], []
    for s in range(lo // S, (hi - 1) // S + 1) if hi > lo else ():
        s_lo, s_hi = storage.shard_range(s, S, n)
        path = storage.shard_path(folder, s)
        if not storage.exists(path):
            raise InputError(path, "shard file missing", "rerun the stage that writes this folder")
        t = storage.read_table(path, ["user", column])
        if t.num_rows != s_hi - s_lo:
            raise InputError(
                path,
                f"{t.num_rows} rows for users [{s_lo}, {s_hi})",
                "the folder is corrupt; delete it and rerun the stage that writes it",
            )
        off, val = storage.list_to_csr(t.column(column))
        a, b = max(lo, s_lo) - s_lo, min(hi, s_hi) - s_lo
        lengths.append(np.diff(off)[a:b])
        items.append(val[off[a] : off[b]])
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return CSR(offsets, np.concatenate(items).astype(np.int32) if items else np.zeros(0, np.int32), lo)


def load_range(run: str, split: str, lo: int, hi: int, manifest: dict | None = None) -> CSR:
    """Lists of users [lo, hi) of a data split (train / valid / test)."""
    return read_lists(storage.join(data_dir(run), split), "items", lo, hi, manifest or load_manifest(run))


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
                storage.join(data_dir(run), storage.MANIFEST),
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
        self.keys = interaction_keys(data.train, data.n_items) if negatives else None
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
