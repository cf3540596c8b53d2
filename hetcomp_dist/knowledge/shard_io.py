"""Reading and writing the knowledge stage's per-user shards (the layout is ARCHITECTURE.md's).

A shard task reads shard s of several datasets -- each teacher's ``state=<e>`` lists, the previous
round -- and writes shard s of the round. List columns go from Parquet straight to numpy: Arrow's
offsets and values buffers (no per-row Python), copied once into the caller's dense -1 padded block
by a compiled loop, after which the Arrow table is freed: a task holds its dense inputs and one
decoded column at a time, never the Arrow tables of all its inputs.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from hetcomp_dist import storage
from hetcomp_dist.data.dataset import check_users, read_lists, read_range
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout

PAD = -1


# items + 1 as uint16 (0 = PAD) when every id fits: half the bytes to store and to decompress
NARROW_MAX_ITEMS = (1 << 16) - 1


def write_state_cache(path: str, lo: int, hi: int, lists: np.ndarray, n_items: int) -> None:
    """Shard [lo, hi) of a teacher state, (n, K) int32 -1 padded and already checked against n_items,
    as an lz4 Arrow IPC file: ``user`` int32 and ``items`` fixed_size_list<K> of item + 1 as uint16
    (n_items <= NARROW_MAX_ITEMS, 0 = PAD) or of the ids as int32 (-1 = PAD).

    Every DKC round reads a shard's states again, and decoding Parquet's list<int32> would be most of
    a round's time.
    """
    n, K = lists.shape
    if lists.size and (lists.min() < PAD or lists.max() >= n_items):
        raise ValueError(
            f"{path}: the lists must hold ids in [0, {n_items}) or {PAD}, got "
            f"[{int(lists.min())}, {int(lists.max())}]"
        )
    if n_items <= NARROW_MAX_ITEMS:
        values = pa.array((lists.ravel() + 1).astype(np.uint16))
    else:
        values = pa.array(np.ascontiguousarray(lists, dtype=np.int32).ravel())
    table = pa.table(
        {
            "user": pa.array(np.arange(lo, hi, dtype=np.int32)),
            "items": pa.FixedSizeListArray.from_arrays(values, K),
        }
    )
    storage.write_ipc_atomic(path, table)


def read_state_cache(path: str, lo: int, hi: int, out: np.ndarray, n_items: int) -> np.ndarray:
    """`read_dense` of a `write_state_cache` file: its lists into out (hi-lo, K) int32, -1 padded,
    checked (users, K, item ids < n_items) with an InputError naming the file."""
    fix = "delete RUN/knowledge and rebuild round 0 (the copies of the teachers' states are made there)"
    t = storage.read_ipc(path, fix)
    n, K = out.shape
    typ = t.schema.field("items").type if "items" in t.column_names else None
    if (
        typ is None
        or "user" not in t.column_names
        or not pa.types.is_fixed_size_list(typ)
        or typ.list_size != K
        or typ.value_type not in (pa.uint16(), pa.int32())
    ):
        raise InputError(
            path, f"expected columns user, items: fixed_size_list<uint16 or int32, {K}>, got {t.schema}", fix
        )
    check_users(t, lo, hi, path, fix)
    if n == 0:
        return out
    col = (
        t.column("items").combine_chunks()
        if t.column("items").num_chunks != 1
        else t.column("items").chunk(0)
    )
    flat = col.flatten()
    if col.null_count or flat.null_count:
        raise InputError(path, "null lists or items", fix)
    values = flat.to_numpy().reshape(n, K)
    if typ.value_type == pa.uint16():
        np.subtract(values, 1, out=out, dtype=np.int32)  # 0 (PAD) -> -1
        top = int(values.max()) - 1
    else:
        np.copyto(out, values)
        top = int(values.max())
    check_ids(top, n_items, path)
    return out


@numba.njit(cache=True)
def _fill(offsets, values, out):
    """out[i] = values[offsets[i]:offsets[i+1]] then PADs (each row fits: checked by the caller);
    returns the largest value copied (-1 for none), for the caller's range check."""
    n, width = out.shape
    top = -1
    for i in range(n):
        a, length = offsets[i], offsets[i + 1] - offsets[i]
        for j in range(length):
            out[i, j] = values[a + j]
            top = max(top, values[a + j])
        for j in range(length, width):
            out[i, j] = PAD
    return top


def fill_dense(
    off: np.ndarray, val: np.ndarray, out: np.ndarray, where: str, n_items: int | None = None
) -> np.ndarray:
    """Writes CSR lists into `out` (n, width) int32, -1 padded; a list longer than width, or (with
    n_items) an item id >= n_items, is an InputError."""
    lengths = np.diff(off)
    if len(lengths) and lengths.max() > out.shape[1]:
        raise InputError(
            where,
            f"a list has {int(lengths.max())} items, more than K = {out.shape[1]}",
            "export the teachers with the same K as knowledge.topk",
        )
    top = _fill(np.asarray(off, dtype=np.int64), np.asarray(val, dtype=np.int32), out)
    check_ids(top, n_items, where)
    return out


def check_ids(top: int, n_items: int | None, where: str) -> None:
    """InputError when the largest item id `top` of the lists read from `where` is outside n_items."""
    if n_items is not None and top >= n_items:
        raise InputError(
            where,
            f"item id {int(top)} is outside this run's catalogue of {n_items} items",
            "the lists must hold this run's dense item ids: re-export them from this run's data",
        )


def block(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised int32 array from Arrow's memory pool (mimalloc or jemalloc).

    The pool reuses the pages it freed (a shard task's previous block, Arrow's own decode buffers),
    where a large np.empty maps fresh pages each time: first-touch page faults then cost as much as
    parsing the files.
    """
    buf = pa.allocate_buffer(int(np.prod(shape)) * 4)
    return np.frombuffer(buf, dtype=np.int32).reshape(shape)  # the array keeps the buffer alive


def range_name(folder: str, lo: int, hi: int, manifest: dict) -> str:
    """What an error about users [lo, hi) of a folder names: their shard file, or the folder when they
    span several."""
    S = manifest["shard_size"]
    return storage.shard_path(folder, lo // S) if hi > lo and lo // S == (hi - 1) // S else folder


def read_dense(
    folder: str,
    lo: int,
    hi: int,
    width: int,
    manifest: dict,
    column: str = "items",
    out: np.ndarray | None = None,
    n_items: int | None = None,
) -> np.ndarray:
    """(hi-lo, width) int32 -1 padded lists of users [lo, hi) of a folder's list column (`read_range`),
    into `out` when given; with n_items, an item id >= n_items is an InputError naming the file."""
    out = np.empty((hi - lo, width), dtype=np.int32) if out is None else out
    lists = read_lists(folder, column, lo, hi, manifest)
    return fill_dense(lists.offsets, lists.items, out, range_name(folder, lo, hi, manifest), n_items)


def fixed_list(mat: np.ndarray, typ: pa.DataType) -> pa.Array:
    """list<typ> column of a (n, M) matrix (every row has M entries)."""
    n, m = mat.shape
    offsets = pa.array(np.arange(0, n * m + 1, m, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(mat).ravel(), type=typ))


def read_round(
    run: str, round_idx: int, lo: int, hi: int, M: int, K: int, manifest: dict, rounds: str | None = None
):
    """(v (n, M) int64, d (n, M) float32, targets (n, K) int32) of users [lo, hi) of a committed round
    (`manifest`: the run's shard size and user count; `rounds`: see `round_dir`)."""
    folder = RunLayout(run).round(round_idx, rounds)
    t = read_range(folder, ["v", "d", "targets"], lo, hi, manifest, "delete the round and rebuild it")
    v = t.column("v").combine_chunks().flatten().to_numpy().astype(np.int64).reshape(-1, M)
    d = (
        t.column("d")
        .combine_chunks()
        .flatten()
        .to_numpy(zero_copy_only=False)
        .astype(np.float32)
        .reshape(-1, M)
    )
    targets = fill_dense(
        *storage.list_to_csr(t.column("targets")),
        np.empty((hi - lo, K), np.int32),
        range_name(folder, lo, hi, manifest),
    )
    return v, d, targets


def write_round_shard(
    run: str,
    round_idx: int,
    s: int,
    lo: int,
    hi: int,
    v: np.ndarray,
    d: np.ndarray,
    targets: np.ndarray,
    rounds: str | None = None,
) -> None:
    """Shard s of a round: v (n, M) int8, d (n, M) float32, targets (n, K) -1 padded, written atomically."""
    storage.write_table_atomic(
        storage.shard_path(RunLayout(run).round(round_idx, rounds), s),
        storage.user_table(
            lo,
            hi,
            v=fixed_list(v.astype(np.int8), pa.int8()),
            d=fixed_list(d.astype(np.float32), pa.float32()),
            targets=storage.dense_to_list(targets),
        ),
    )
