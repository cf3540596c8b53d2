"""Reading a run's data stage: ``RUN/data/{train,valid,test}/shard-*.parquet`` + ``_manifest.json``.

Each split is a per-user list column (one row per user of the shard's range, empty lists allowed for
valid/test). In memory a split is CSR: ``offsets`` (n+1,) int64 and ``items`` int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class CSR:
    """Per-user item lists for users ``lo .. lo + n - 1``."""

    offsets: np.ndarray  # (n+1,) int64
    items: np.ndarray  # int32
    lo: int = 0

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    def row(self, u: int) -> np.ndarray:
        """Items of absolute user id u."""
        r = u - self.lo
        return self.items[self.offsets[r] : self.offsets[r + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows(self, r0: int, r1: int) -> CSR:
        """Rows [r0, r1) (relative), re-based offsets."""
        o0, o1 = self.offsets[r0], self.offsets[r1]
        return CSR(self.offsets[r0 : r1 + 1] - o0, self.items[o0:o1], self.lo + r0)

    def take(self, rows: np.ndarray) -> CSR:
        """Arbitrary rows (relative indices), in the given order; lo is meaningless afterwards."""
        lengths = self.lengths()[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = self.offsets[rows]
        idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return CSR(offsets, self.items[idx], 0)

    def user_ids(self) -> np.ndarray:
        """(nnz,) absolute user id of every entry."""
        return np.repeat(np.arange(self.lo, self.lo + self.n, dtype=np.int64), self.lengths())


def union(*parts: CSR) -> CSR:
    """Row-wise concatenation of aligned CSRs (same users): e.g. train ∪ test exclusion sets."""
    n = parts[0].n
    lengths = sum(p.lengths() for p in parts)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = np.concatenate([np.repeat(np.arange(n), p.lengths()) for p in parts])
    vals = np.concatenate([p.items for p in parts])
    order = np.argsort(rows, kind="stable")
    return CSR(offsets, vals[order].astype(np.int32), parts[0].lo)


def load_manifest(run: str) -> dict:
    """The data manifest; a clear error when the run has no finished data stage."""
    data = RunLayout(run).data
    m = storage.read_manifest(data)
    if m is None:
        raise InputError(
            storage.manifest_path(data),
            "the run has no finished data stage",
            "run `hetcomp-dist ingest --out RUN ...` or `hetcomp-dist synth --out RUN ...` first",
        )
    return m


def load_shard(run: str, split: str, s: int, manifest: dict | None = None) -> CSR:
    m = manifest or load_manifest(run)
    lo, hi = storage.shard_range(s, m["shard_size"], m["n_users"])
    path = storage.shard_path(RunLayout(run).split(split), s)
    t = storage.read_table(path, ["user", "items"])
    if t.num_rows != hi - lo:
        raise InputError(
            path,
            f"{t.num_rows} rows for users [{lo}, {hi})",
            "the run is corrupt; delete RUN/data and ingest again",
        )
    off, val = storage.list_to_csr(t.column("items"))
    return CSR(off, val, lo)


def load_split(run: str, split: str, manifest: dict | None = None) -> CSR:
    """The whole split in memory (O(interactions)); for per-shard work use `load_shard`."""
    m = manifest or load_manifest(run)
    parts = [load_shard(run, split, s, m) for s in range(storage.n_shards(m["n_users"], m["shard_size"]))]
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([p.lengths() for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return CSR(offsets, np.concatenate([p.items for p in parts]), 0)


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
    return read_lists(RunLayout(run).split(split), "items", lo, hi, manifest or load_manifest(run))
