"""Raw ids <-> dense ids of a run's users or items, and lists of raw ids given by users.

An ingested run keeps ``RUN/data/maps/{users,items}.parquet`` (``id`` dense int32, ``raw`` the input's
id, integer or string); a synthetic run has no maps: its raw ids are its dense ids. Lookups are Arrow
hash joins (`pyarrow.compute.index_in`), O(ids), never a Python loop over the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hetcomp_dist import storage
from hetcomp_dist.errors import InputError

KINDS = ("users", "items")


@dataclass(frozen=True)
class IdMap:
    """Dense id -> raw id of one kind (users or items).

    Attributes:
        kind: "users" or "items".
        raw: (n,) the raw id of every dense id (an Arrow array: int64 or string).
    """

    kind: str
    raw: pa.Array

    @property
    def n(self) -> int:
        return len(self.raw)

    @property
    def type(self) -> pa.DataType:
        return self.raw.type

    def to_dense(self, raw: pa.Array) -> np.ndarray:
        """(len(raw),) int64 dense ids, -1 where a raw id is unknown."""
        raw = raw.cast(self.type) if raw.type != self.type else raw
        idx = pc.index_in(raw, value_set=self.raw)
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def to_raw(self, dense: np.ndarray) -> pa.Array:
        """Raw ids of dense ids (all valid)."""
        return self.raw.take(pa.array(np.asarray(dense, dtype=np.int64)))

    def dense_or_fail(self, raw: pa.Array, where: str, fix: str) -> np.ndarray:
        """Dense ids of `raw`; any unknown id is an InputError naming `where` and the first few."""
        dense = self.to_dense(raw)
        bad = np.nonzero(dense < 0)[0]
        if len(bad):
            shown = ", ".join(str(raw[int(i)].as_py()) for i in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise InputError(where, f"{len(bad)} unknown {self.kind[:-1]} id(s): {shown}{more}", fix)
        return dense


def load_idmap(run: str, kind: str, manifest: dict) -> IdMap:
    """The map of `kind` for RUN (identity for a run written without maps, e.g. a synthetic one)."""
    from hetcomp_dist.layout import RunLayout

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    layout = RunLayout(run)
    path = layout.users_map if kind == "users" else layout.items_map
    n = int(manifest[f"n_{kind}"])
    if not storage.exists(path):
        return IdMap(kind, pa.array(np.arange(n, dtype=np.int64)))
    table = storage.read_table(path)
    dense = table.column("id").to_numpy()
    if len(dense) != n or not np.array_equal(dense, np.arange(n)):
        raise InputError(path, f"not a map of the run's {n:,} dense {kind} ids", "rerun the data stage")
    raw = table.column("raw").combine_chunks()
    return IdMap(kind, raw.cast(pa.int64() if pa.types.is_integer(raw.type) else pa.string()))


def read_raw_ids(path: str, kind: str, like: pa.DataType) -> pa.Array:
    """Raw ids listed in a user's file: a text file with one id per line (blank lines skipped), or a
    Parquet file whose first column holds them. Parsed as `like` (the run's raw id type).

    Raises:
        InputError: missing or unreadable file, an id that is not of the run's type, or no ids at all.
    """
    if not storage.exists(path):
        raise InputError(path, "file not found", f"pass a file of raw {kind} ids, one per line")
    if path.endswith(".parquet"):
        try:
            col = storage.read_table(path).column(0).combine_chunks()
        except (pa.ArrowInvalid, OSError, IndexError) as e:
            raise InputError(path, f"not a readable Parquet file with a column of ids ({e})") from e
        values = col
    else:
        try:
            lines = storage.read_bytes(path).decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise InputError(path, "not a UTF-8 text file", f"one raw {kind} id per line") from e
        values = pa.array([s.strip() for s in lines if s.strip()], pa.string())
    if len(values) == 0:
        raise InputError(path, f"no {kind} ids in the file", f"one raw {kind} id per line")
    if pa.types.is_integer(like) and not pa.types.is_integer(values.type):
        text = values.cast(pa.string())
        ok = pc.match_substring_regex(text, r"^[+-]?\d+$")
        if not pc.all(ok).as_py():
            first = int(np.argmin(ok.to_numpy(zero_copy_only=False)))
            raise InputError(
                f"{path}:{first + 1}",
                f"{text[first].as_py()!r} is not an integer id (the run's {kind} ids are integers)",
            )
        values = text.cast(pa.int64())
    elif pa.types.is_string(like) or pa.types.is_large_string(like):
        values = values.cast(pa.string())
    return values.cast(like)
