"""Streaming, validating readers of interaction files: CiteULike users.dat, CSV and Parquet.

Each reader yields ``(users, items)`` batches of raw ids as Arrow arrays -- ``int64`` for integer id
columns, ``large_string`` for string ones -- after the rating threshold. Every problem a user can fix
raises `InputError` naming the file, line/row or column, and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from hetcomp_dist import storage
from hetcomp_dist.config import DataConfig
from hetcomp_dist.errors import InputError

Batch = tuple[pa.Array, pa.Array]
FORMATS = ("citeulike", "csv", "parquet")
_CHUNK_BYTES = 16 * 2**20
_ROWS_PER_BATCH = 1 << 20


def check_input(path: str, fmt: str) -> dict:
    """Checks that `path` exists and `fmt` is a known format; returns the input's fingerprint
    (`storage.fingerprint`: sizes and modification times, which change when the input does)."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}", "unknown input format", f"use one of {', '.join(FORMATS)}")
    if not path:
        raise InputError(
            "--input", "no input file given", "pass --input PATH (local path or s3:// / gs:// URI)"
        )
    try:
        return storage.fingerprint(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(
            path, f"cannot access ({e})", "check the path/URI and the storage credentials"
        ) from e


def read_interactions(path: str, fmt: str, cfg: DataConfig) -> Iterator[Batch]:
    """Raw (user, item) id batches of `path` in format `fmt`, validated as they stream."""
    check_input(path, fmt)
    if fmt == "citeulike":
        return _citeulike(path)
    if fmt == "csv":
        return _csv(path, cfg)
    return _parquet(path, cfg)


# --------------------------------------------------------------------------------- users.dat
def _lines(path: str) -> Iterator[list[bytes]]:
    """Lists of complete lines (without the newline), read in large chunks."""
    fs, p = storage.resolve(path)
    carry = b""
    with fs.open_input_stream(p, compression="detect") as f:
        while True:
            chunk = f.read(_CHUNK_BYTES)
            if not chunk:
                break
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            yield lines
    if carry:
        yield [carry]


def _citeulike(path: str) -> Iterator[Batch]:
    """users.dat: line k (0-based) is user k, ``N item_1 .. item_N``."""
    fix = "each line must be `N item_1 ... item_N` (N = number of items, ids >= 0, single spaces)"
    line_no = 0
    for lines in _lines(path):
        users: list[int] = []
        items: list[int] = []
        for raw in lines:
            line_no += 1
            where = f"{path}, line {line_no}"
            try:
                text = raw.decode("ascii").strip()
            except UnicodeDecodeError as e:
                raise InputError(
                    where, "not a text line (undecodable bytes) -- is this a CiteULike users.dat?", fix
                ) from e
            if not text:
                if line_no == 1:
                    raise InputError(where, "empty first line", fix)
                raise InputError(where, "empty line (every line must start with the item count)", fix)
            tokens = text.split()
            try:
                vals = [int(t) for t in tokens]
            except ValueError:
                bad = next(t for t in tokens if not _is_int(t))
                raise InputError(where, f"{bad!r} is not an integer id", fix) from None
            count, its = vals[0], vals[1:]
            if count != len(its):
                raise InputError(where, f"count field says {count} items but the line has {len(its)}", fix)
            if its and min(its) < 0:
                raise InputError(where, f"negative item id {min(its)}", fix)
            users.extend([line_no - 1] * len(its))
            items.extend(its)
        if users:
            yield pa.array(users, pa.int64()), pa.array(items, pa.int64())
    if line_no == 0:
        raise InputError(path, "the file is empty", fix)


def _is_int(t: str) -> bool:
    try:
        int(t)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------ CSV / Parquet
def _columns(cfg: DataConfig) -> list[str]:
    return [cfg.user_col, cfg.item_col] + ([cfg.rating_col] if cfg.rating_col else [])


def _check_columns(path: str, names: list[str], cfg: DataConfig) -> None:
    for flag, col in (
        ("--user-col", cfg.user_col),
        ("--item-col", cfg.item_col),
        ("--rating-col", cfg.rating_col),
    ):
        if col and col not in names:
            hint = "; if the file is not comma-separated, pass --delimiter" if len(names) == 1 else ""
            raise InputError(
                f"{path}, column {col!r}",
                "column not found",
                f"the file has columns {names}; pass {flag} with one of them{hint}",
            )


def _csv(path: str, cfg: DataConfig) -> Iterator[Batch]:
    fs, p = storage.resolve(path)
    parse = pacsv.ParseOptions(delimiter=cfg.csv_delimiter)
    try:
        with fs.open_input_stream(p, compression="detect") as f:
            names = pacsv.open_csv(f, parse_options=parse).schema.names
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as e:
        raise InputError(
            path,
            f"not a readable CSV file ({e})",
            "check --format and --delimiter; the first line must be a header",
        ) from e
    _check_columns(path, names, cfg)
    cols = _columns(cfg)
    convert = pacsv.ConvertOptions(include_columns=cols, strings_can_be_null=True)
    row0 = 0
    with fs.open_input_stream(p, compression="detect") as f:
        reader = pacsv.open_csv(
            f,
            parse_options=parse,
            convert_options=convert,
            read_options=pacsv.ReadOptions(block_size=32 * 2**20),
        )
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise InputError(
                    path,
                    f"unreadable CSV after data row {row0} ({e})",
                    "make every value of a column the same type (e.g. all ids integers, or quote them all)",
                ) from e
            yield _validated(batch, path, cfg, row0, header_lines=1)
            row0 += batch.num_rows


def _parquet(path: str, cfg: DataConfig) -> Iterator[Batch]:
    fs, p = storage.resolve(path)
    try:
        dataset = pads.dataset(p, filesystem=fs, format="parquet")
        names = dataset.schema.names
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(
            path, f"not a readable Parquet file or folder ({e})", "check --format (csv|parquet|citeulike)"
        ) from e
    _check_columns(path, names, cfg)
    row0 = 0
    try:
        for batch in dataset.to_batches(columns=_columns(cfg), batch_size=_ROWS_PER_BATCH):
            yield _validated(batch, path, cfg, row0, header_lines=0)
            row0 += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(
            path, f"unreadable Parquet data after row {row0} ({e})", "rewrite the file with pyarrow/pandas"
        ) from e


def _row_where(path: str, col: str, row: int, header_lines: int) -> str:
    if header_lines:
        return f"{path}, line {row + 1 + header_lines}, column {col!r}"
    return f"{path}, row {row}, column {col!r}"


def _validated(batch: pa.RecordBatch, path: str, cfg: DataConfig, row0: int, header_lines: int) -> Batch:
    """Checks ids and ratings of one batch; applies the rating threshold."""
    users = _ids(batch.column(cfg.user_col), path, cfg.user_col, row0, header_lines)
    items = _ids(batch.column(cfg.item_col), path, cfg.item_col, row0, header_lines)
    if cfg.rating_col:
        r = batch.column(cfg.rating_col)
        if not (pa.types.is_integer(r.type) or pa.types.is_floating(r.type)):
            raise InputError(
                f"{path}, column {cfg.rating_col!r}",
                f"ratings must be numbers, got {r.type}",
                "pass a numeric --rating-col or none",
            )
        rv = r.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.nonzero(np.isnan(rv))[0]
        if len(bad):
            raise InputError(
                _row_where(path, cfg.rating_col, row0 + int(bad[0]), header_lines),
                "missing or NaN rating",
                "fill or remove the row",
            )
        keep = pa.array(rv >= cfg.rating_threshold)
        users, items = users.filter(keep), items.filter(keep)
    return users, items


def _ids(col: pa.Array, path: str, name: str, row0: int, header_lines: int) -> pa.Array:
    """int64 or large_string ids; null, NaN, negative or fractional numeric ids are errors."""
    fix = "ids must be non-negative integers or strings; fix or remove the row"
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.null_count:
        first = int(np.nonzero(col.is_null().to_numpy(zero_copy_only=False))[0][0])
        raise InputError(_row_where(path, name, row0 + first, header_lines), "missing id (empty or NaN)", fix)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.large_string())
    if pa.types.is_integer(t):
        v = col.to_numpy()
        if pa.types.is_signed_integer(t) and len(v) and v.min() < 0:
            first = int(np.nonzero(v < 0)[0][0])
            raise InputError(
                _row_where(path, name, row0 + first, header_lines), f"negative id {v[first]}", fix
            )
        return col.cast(pa.int64())
    if pa.types.is_floating(t):
        v = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isfinite(v) | (v != np.floor(v)) | (v < 0) | (v >= 2**63)
        if bad.any():
            first = int(np.nonzero(bad)[0][0])
            raise InputError(
                _row_where(path, name, row0 + first, header_lines),
                f"id {v[first]!r} is not a non-negative integer",
                fix,
            )
        return pa.array(v.astype(np.int64))
    raise InputError(
        f"{path}, column {name!r}", f"unsupported id type {t}", "ids must be integers or strings"
    )


class RawIds:
    """Distinct raw ids collected in a streaming pass, then sorted; ``lookup`` maps raw -> rank."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parts: list[pa.Array] = []
        self.pending = 0
        self.values: pa.Array | None = None
        self._np: np.ndarray | None = None

    def add(self, arr: pa.Array) -> None:
        if self.parts and self.parts[0].type != arr.type:
            raise InputError(
                f"column {self.name!r}",
                f"mixes id types ({self.parts[0].type} and {arr.type})",
                "make every id of the column the same type",
            )
        u = pc.unique(arr)
        self.parts.append(u)
        self.pending += len(u)
        if self.pending > 4 * 2**20 and len(self.parts) > 1:
            self.parts = [pc.unique(pa.concat_arrays(self.parts))]
            self.pending = len(self.parts[0])

    def finish(self) -> int:
        """Sorts the distinct ids; returns their number."""
        if not self.parts:
            self.values = pa.array([], pa.int64())
        else:
            u = pc.unique(pa.concat_arrays(self.parts))
            self.values = u.take(pc.sort_indices(u))
        self.parts = []
        if pa.types.is_integer(self.values.type):
            self._np = self.values.to_numpy()
        return len(self.values)

    def lookup(self, arr: pa.Array, where: str) -> np.ndarray:
        """(n,) int64 rank of each raw id among the sorted distinct ids.

        Raises:
            InputError: naming `where` (the input), when an id is not among them: the input changed
                since the pass that collected them.
        """
        if self._np is not None:
            raw = arr.to_numpy()
            rank = np.searchsorted(self._np, raw).astype(np.int64)
            known = rank < len(self._np)
            known[known] = self._np[rank[known]] == raw[known]
        else:
            idx = pc.index_in(arr, value_set=self.values)
            known = idx.is_valid().to_numpy(zero_copy_only=False)
            rank = idx.fill_null(0).to_numpy().astype(np.int64)
        if not known.all():
            first = arr[int(np.argmin(known))].as_py()
            raise InputError(
                where,
                f"changed while being read: {self.name!r} id {first!r} was not in it on the first pass",
                "rerun the ingest once nothing writes the input any more",
            )
        return rank
