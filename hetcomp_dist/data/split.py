"""The paper's per-user split (METHOD.md §1 steps 2-3) and the streaming writer of split shards.

The split of a user depends only on (seed, dense user id, the user's item set): every (user, item)
pair gets a 64-bit hash key and a user's items are "shuffled" by sorting on it. So the split does not
depend on input row order, on batching, on shard size, or on which process computes it -- an
in-process run and a shard-parallel run give identical shards.

Step 3 ("drop valid/test items that never occur in any train") is global, so `SplitWriter` works in
two passes: train shards are final as soon as a shard range is complete; raw valid/test shards go to a
local spill folder and are filtered once every train list has been seen.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hetcomp_dist import storage
from hetcomp_dist.data.dataset import CSR, SPLITS
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import Progress, log

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def pair_keys(seed: int, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(n,) uint64 pseudo-random keys of (user, item) pairs, a pure function of (seed, user, item)."""
    s = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    h = _mix(s ^ np.asarray(users, dtype=np.int64).astype(np.uint64))
    return _mix(h ^ np.asarray(items, dtype=np.int64).astype(np.uint64))


def _csr(offsets_from_counts: np.ndarray, values: np.ndarray, lo: int) -> CSR:
    offsets = np.zeros(len(offsets_from_counts) + 1, dtype=np.int64)
    np.cumsum(offsets_from_counts, out=offsets[1:])
    return CSR(offsets, np.ascontiguousarray(values, dtype=np.int32), lo)


def split_users(
    rows: CSR, seed: int, test_frac: float = 0.2, valid_frac: float = 0.2
) -> tuple[CSR, CSR, CSR]:
    """Steps 2 of METHOD.md §1 for a block of users: seeded shuffle, then test / valid / train.

    Per user with n_u distinct items: n_t = floor(test_frac * n_u) and n_v = floor(valid_frac * n_u);
    the first n_t shuffled items go to test, the next n_v to valid, the rest to train.

    Args:
        rows: per-user distinct item lists of users rows.lo .. rows.lo + rows.n - 1 (dense ids).
        seed: split seed.

    Returns:
        (train, valid, test) CSRs over the same users, each list sorted by item id.
    """
    n = rows.n
    lengths = rows.lengths()
    row_of = np.repeat(np.arange(n), lengths)
    keys = pair_keys(seed, row_of + rows.lo, rows.items)
    order = np.lexsort((rows.items, keys, row_of))
    pos = np.arange(len(order)) - np.repeat(rows.offsets[:-1], lengths)  # rank inside the user's shuffle
    n_test = np.floor(test_frac * lengths).astype(np.int64)
    n_valid = np.floor(valid_frac * lengths).astype(np.int64)
    part = np.where(
        pos < np.repeat(n_test, lengths), 2, np.where(pos < np.repeat(n_test + n_valid, lengths), 1, 0)
    )  # 0 train, 1 valid, 2 test
    items_sh = rows.items[order]
    out = []
    for p in range(3):
        sel = part == p
        r, it = row_of[sel], items_sh[sel]
        o = np.lexsort((it, r))  # each list ascending by item id
        out.append(_csr(np.bincount(r, minlength=n), it[o], rows.lo))
    return out[0], out[1], out[2]


def drop_unseen(valid: CSR, test: CSR, in_train: np.ndarray) -> tuple[CSR, CSR]:
    """Step 3: drop valid/test items never in any train list; a user whose valid or test becomes
    empty is dropped from both (its lists become empty).

    Args:
        valid, test: CSRs over the same users.
        in_train: (n_items,) bool, item occurs in some user's train list.
    """
    kept = []
    for part in (valid, test):
        keep = in_train[part.items]
        rows = np.repeat(np.arange(part.n), part.lengths())[keep]
        kept.append((rows, part.items[keep]))
    nv = np.bincount(kept[0][0], minlength=valid.n)
    nt = np.bincount(kept[1][0], minlength=test.n)
    evaluated = (nv > 0) & (nt > 0)
    out = []
    for rows, items in kept:
        sel = evaluated[rows]
        out.append(_csr(np.bincount(rows[sel], minlength=valid.n), items[sel], valid.lo))
    return out[0], out[1]


def concat_rows(parts: list[CSR]) -> CSR:
    """Consecutive user blocks -> one CSR (lo of the first)."""
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([p.lengths() for p in parts])
    return _csr(lengths, np.concatenate([p.items for p in parts]), parts[0].lo)


def shard_table(rows: CSR) -> pa.Table:
    return storage.user_table(rows.lo, rows.lo + rows.n, items=storage.csr_to_list(rows.offsets, rows.items))


@dataclass
class SplitCounts:
    n_users: int = 0
    n_interactions: int = 0
    n_train: int = 0
    n_valid: int = 0
    n_test: int = 0
    n_eval_users: int = 0


class SplitWriter:
    """Receives consecutive blocks of users (dense ids from 0, in order), splits them and writes
    ``RUN/data/{train,valid,test}/shard-*.parquet``.

    Memory: one shard of lists plus the pending block; raw valid/test shards wait in a local spill
    folder until `finish` applies the global step-3 rule.

    Args:
        layout: the run's layout (RUN a local path or URI).
        n_users, n_items: sizes of the dense id spaces.
        shard_size: users per shard.
        seed, test_frac, valid_frac: split parameters.
    """

    def __init__(
        self,
        layout: RunLayout,
        n_users: int,
        n_items: int,
        shard_size: int,
        seed: int,
        test_frac: float = 0.2,
        valid_frac: float = 0.2,
        stage: str = "split",
    ) -> None:
        self.layout, self.n_users, self.n_items, self.S = layout, n_users, n_items, shard_size
        self.seed, self.test_frac, self.valid_frac, self.stage = seed, test_frac, valid_frac, stage
        self.in_train = np.zeros(n_items, dtype=bool)
        self.pending: list[CSR] = []
        self.pending_n = 0
        self.next_user = 0
        self.next_shard = 0
        self.counts = SplitCounts(n_users=n_users)
        self.files: dict[str, int] = {}
        self.spill = tempfile.mkdtemp(prefix="hetcomp-split-")
        self.progress = Progress(stage, n_users, "users")

    def add(self, rows: CSR) -> None:
        """Adds the distinct item lists of users rows.lo .. rows.lo + rows.n - 1 (must follow on)."""
        if rows.lo != self.next_user:
            raise ValueError(f"users must arrive in order: expected {self.next_user}, got {rows.lo}")
        self.next_user += rows.n
        self.pending.append(rows)
        self.pending_n += rows.n
        while self.pending_n >= self.S or (self.next_user == self.n_users and self.pending_n > 0):
            self._flush_shard()

    def _flush_shard(self) -> None:
        block = concat_rows(self.pending)
        lo, hi = storage.shard_range(self.next_shard, self.S, self.n_users)
        take = hi - lo
        shard, rest = block.rows(0, take), block.rows(take, block.n)
        self.pending = [rest] if rest.n else []
        self.pending_n = rest.n
        train, valid, test = split_users(shard, self.seed, self.test_frac, self.valid_frac)
        self.in_train[train.items] = True
        self.counts.n_interactions += len(shard.items)
        self.counts.n_train += len(train.items)
        self._write("train", self.next_shard, train)
        for name, part in (("valid", valid), ("test", test)):
            np.save(os.path.join(self.spill, f"{name}-{self.next_shard}-off.npy"), part.offsets)
            np.save(os.path.join(self.spill, f"{name}-{self.next_shard}-val.npy"), part.items)
        self.next_shard += 1
        self.progress.update(shard.n)

    def _write(self, split: str, s: int, rows: CSR) -> None:
        path = storage.shard_path(self.layout.split(split), s)
        storage.write_table_atomic(path, shard_table(rows))
        self.files[storage.relative(path, self.layout.data)] = rows.n

    def _load_spill(self, name: str, s: int, lo: int) -> CSR:
        off = np.load(os.path.join(self.spill, f"{name}-{s}-off.npy"), allow_pickle=False)
        val = np.load(os.path.join(self.spill, f"{name}-{s}-val.npy"), allow_pickle=False)
        return CSR(off, val, lo)

    def finish(self) -> SplitCounts:
        """Second pass: step 3 on every spilled valid/test shard; returns the split counts."""
        try:
            if self.next_user != self.n_users:
                raise ValueError(f"got {self.next_user} of {self.n_users} users")
            self.progress.close()
            for s, lo, _hi in storage.iter_shards(self.layout.data, self.n_users, self.S):
                valid, test = drop_unseen(
                    self._load_spill("valid", s, lo), self._load_spill("test", s, lo), self.in_train
                )
                self._write("valid", s, valid)
                self._write("test", s, test)
                self.counts.n_valid += len(valid.items)
                self.counts.n_test += len(test.items)
                self.counts.n_eval_users += int((valid.lengths() > 0).sum())
            log(
                self.stage,
                f"split: train {self.counts.n_train:,} / valid {self.counts.n_valid:,} / test "
                f"{self.counts.n_test:,} pairs, {self.counts.n_eval_users:,} evaluated users",
            )
            return self.counts
        finally:
            self.close()

    def close(self) -> None:
        shutil.rmtree(self.spill, ignore_errors=True)


def split_manifest(
    counts: SplitCounts,
    n_items: int,
    shard_size: int,
    seed: int,
    cfg_hash: str,
    files: dict[str, int],
    source: dict,
) -> dict:
    """The data manifest (ARCHITECTURE.md layout)."""
    return {
        "n_users": counts.n_users,
        "n_items": n_items,
        "n_interactions": counts.n_interactions,
        "n_train": counts.n_train,
        "n_valid": counts.n_valid,
        "n_test": counts.n_test,
        "n_eval_users": counts.n_eval_users,
        "shard_size": shard_size,
        "seed": seed,
        "config_hash": cfg_hash,
        "files": files,
        "source": source,
        "splits": list(SPLITS),
    }
