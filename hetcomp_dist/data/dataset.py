"""Reading a run's data stage: ``RUN/data/{train,valid,test}/shard-*.parquet`` + ``_manifest.json``,
and the one reader of users [lo, hi) of any per-user dataset (`read_range`).

Each split is a per-user list column (one row per user of the shard's range, empty lists allowed for
valid/test). In memory a split is CSR: ``offsets`` (n+1,) int64 and ``items`` int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hetcomp_dist import storage
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout

SPLITS = ("train", "valid", "test")
CORRUPT = "the folder is corrupt; delete it and rerun the stage that writes it"
DATA_CORRUPT = "the run is corrupt; delete RUN/data and ingest again"


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


# --------------------------------------------------------------------------- users [lo, hi)
def check_users(t: pa.Table, lo: int, hi: int, path: str, fix: str = CORRUPT) -> None:
    """InputError unless table t (of file `path`) holds users [lo, hi), one row each, in order of its ends."""
    user = t.column("user")
    if t.num_rows != hi - lo or (t.num_rows and (user[0].as_py() != lo or user[-1].as_py() != hi - 1)):
        raise InputError(path, f"expected users [{lo}, {hi}) one row each, got {t.num_rows} rows", fix)


def _open(path: str):
    if not storage.exists(path):
        raise InputError(path, "shard file missing", "rerun the stage that writes this folder")
    fs, p = storage.resolve(path)
    return fs.open_input_file(p)


def read_range(
    folder: str, columns: list[str], lo: int, hi: int, manifest: dict, fix: str = CORRUPT
) -> pa.Table:
    """Columns of users [lo, hi) of a folder of user-range shards: the reader of every per-user
    dataset of a run (data splits, the teachers' exports, knowledge rounds and P+, saved top-K lists).

    Reads only the shards that overlap the range, each single-threaded (the dataset reader's thread
    pool costs more than it saves on one-column shards, and a shard task owns one CPU), and checks
    that each one's ``user`` column holds its whole user range, one row per user in order.

    Args:
        folder: the dataset's folder (its files named by `storage.shard_path`).
        columns: the columns to read besides ``user``.
        lo, hi: the users, within [0, manifest["n_users"]].
        manifest: any manifest of the run with its ``shard_size`` and ``n_users``.
        fix: the remedy an InputError about a shard's users names.

    Returns:
        hi - lo rows (``user``, then `columns`) in user order: the shards' own tables, sliced where the
        range cuts them (no copy).
    """
    S, n = manifest["shard_size"], manifest["n_users"]
    if not 0 <= lo <= hi <= n:
        raise InputError(f"users [{lo}, {hi})", f"outside [0, {n})")
    columns = ["user", *(c for c in columns if c != "user")]
    parts = []
    for s in range(lo // S, (hi - 1) // S + 1) if hi > lo else ():
        s_lo, s_hi = storage.shard_range(s, S, n)
        path = storage.shard_path(folder, s)
        with _open(path) as f:
            t = pq.ParquetFile(f).read(columns=columns, use_threads=False)
        check_users(t, s_lo, s_hi, path, fix)
        a, b = max(lo, s_lo) - s_lo, min(hi, s_hi) - s_lo
        parts.append(t if b - a == t.num_rows else t.slice(a, b - a))
    if not parts:  # no user: the columns' types still come from a shard's footer
        with _open(storage.shard_path(folder, min(lo // S, storage.n_shards(n, S) - 1))) as f:
            schema = pq.read_schema(f)
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def read_lists(folder: str, column: str, lo: int, hi: int, manifest: dict, fix: str = CORRUPT) -> CSR:
    """A list column of users [lo, hi) of a folder of user-range shards (`read_range`) as CSR. Its
    arrays may be read-only views of Arrow's buffers."""
    off, val = storage.list_to_csr(read_range(folder, [column], lo, hi, manifest, fix).column(column))
    return CSR(off, val, lo)


def load_range(run: str, split: str, lo: int, hi: int, manifest: dict | None = None) -> CSR:
    """Lists of users [lo, hi) of a data split (train / valid / test)."""
    m = manifest or load_manifest(run)
    return read_lists(RunLayout(run).split(split), "items", lo, hi, m, DATA_CORRUPT)


def load_shard(run: str, split: str, s: int, manifest: dict | None = None) -> CSR:
    """Shard s of a data split."""
    m = manifest or load_manifest(run)
    return load_range(run, split, *storage.shard_range(s, m["shard_size"], m["n_users"]), m)


def load_split(run: str, split: str, manifest: dict | None = None) -> CSR:
    """The whole split in memory (O(interactions)); for per-shard work use `load_shard`."""
    m = manifest or load_manifest(run)
    return load_range(run, split, 0, m["n_users"], m)
