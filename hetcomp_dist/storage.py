"""Storage mechanics shared by every stage: paths, atomic files, manifests, user-range shards.

Which folder holds what is `hetcomp_dist.layout`'s (RunLayout); this module never names a stage.

Every per-user dataset is a folder of user-range shards: shard ``s`` is the file
``<folder>/shard-<s:05d>.parquet`` and holds exactly the users ``[s*S, min((s+1)*S, n_users))``,
one row each, sorted by user -- so a per-user join of two datasets is a positional zip of the same
shard id, with no shuffle. Item lists are ``list<int32>``, best first where they are rankings.

Paths are strings: a local path or any URI pyarrow.fs understands (``s3://``, ``gs://``). Files are
written under a temporary name and renamed; a stage folder is complete only once its
``_manifest.json`` (written last) exists and carries the expected config hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hetcomp_dist.errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "_manifest.json"
CONFIG = "config.yaml"  # the resolved config of the invocation that committed a stage
MARKER = ".hetcomp"  # in every folder a stage creates: only such folders are ever deleted recursively


# ----------------------------------------------------------------------------------------- paths
def is_uri(path: str) -> bool:
    return "://" in path


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI.

    Credentials, region and endpoint come only from the environment or the machine's identity: for
    s3:// the standard AWS variables (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
    ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for S3-compatible stores such as MinIO) or the
    instance profile / pod identity; for gs:// ``GOOGLE_APPLICATION_CREDENTIALS`` or the instance identity.
    """
    if is_uri(path):
        if path.startswith("file://"):
            return pafs.LocalFileSystem(), path[len("file://") :]
        if path.startswith("s3://"):
            # small files (manifests, JSON, small shards) go up in one PutObject instead of a
            # three-request multipart upload; errors still surface before the atomic rename
            path += ("&" if "?" in path else "?") + "allow_delayed_open=true"
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    return pafs.LocalFileSystem(), os.path.abspath(path)


# credentials a URI may carry: the user-info part (s3://KEY:SECRET@bucket) and query parameters whose
# name says key, secret, token, password or credential (pyarrow's ?access_key=...&secret_key=...)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/:\s@\"'\\]*:[^\s@\"'\\]*|[^/:\s@\"'\\]+)@")
_SECRET_PARAM = re.compile(
    r"([?&][A-Za-z0-9_.-]*(?:key|secret|token|password|passwd|credential)[A-Za-z0-9_.-]*=)[^&#\s\"'\\]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by ``***`` (the user-info part and secret
    query parameters), for log lines, error messages and manifests."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def in_submitted_job() -> bool:
    """True inside a ``ray job submit`` entrypoint, whose working directory is Ray's temporary copy."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def absolute(path: str | None, *, output: bool = False, where: str = "path") -> str | None:
    """`path` made absolute against this process's working directory; URIs and "" / None unchanged.

    Called in the driver, before any Ray task, actor or Train worker sees the path: they run in
    working directories of their own. A relative output path inside a submitted job is refused, since
    it would land in the job's temporary copy of the working directory, deleted with the job.
    """
    if not path or is_uri(path):
        return path
    if output and not os.path.isabs(path) and in_submitted_job():
        raise InputError(
            f"{where} {path}",
            "a relative output path inside a submitted job would land in the job's "
            "temporary working-dir copy",
            "pass an absolute path (one machine) or an s3:// / gs:// URI",
        )
    return os.path.abspath(path)


# option name -> True where the command writes there; every local path a command takes is one of these
PATH_OPTIONS: dict[str, bool] = {
    "output": True,
    "run": True,
    "out": True,
    "save_topk": True,
    "metrics_out": True,
    "input": False,
    "config": False,
    "embeddings": False,
    "emb": False,
    "users": False,
    "exclude": False,
    "only": False,
}


def absolute_args(args: Any) -> Any:
    """Makes every path option of a parsed command line absolute (see `absolute`), in place."""
    for name, output in PATH_OPTIONS.items():
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, absolute(value, output=output, where="--" + name.replace("_", "-")))
    return args


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


def relative(path: str, folder: str) -> str:
    """`path` as a name inside `folder` (how a manifest lists its folder's files)."""
    prefix = folder.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not inside {folder}")
    return path[len(prefix) :]


def shard_name(s: int, suffix: str = ".parquet") -> str:
    return f"shard-{s:05d}{suffix}"


def shard_path(folder: str, s: int, suffix: str = ".parquet") -> str:
    return join(folder, shard_name(s, suffix))


def n_shards(n_users: int, shard_size: int) -> int:
    return max(1, -(-n_users // shard_size))


def shard_range(s: int, shard_size: int, n_users: int) -> tuple[int, int]:
    """Users ``[lo, hi)`` held by shard ``s``."""
    lo = s * shard_size
    return lo, min(lo + shard_size, n_users)


# ------------------------------------------------------------------------------- files, atomically
def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def marker_path(folder: str) -> str:
    """The marker file of a folder a stage created (`MARKER`)."""
    return join(folder, MARKER)


def _marker_id(folder: str) -> str | None:
    """The id in `folder`'s marker; None when it has no (readable) marker."""
    try:
        return str(read_json(marker_path(folder)).get("id"))
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def delete_dir(path: str) -> None:
    """Removes a folder with everything in it, only when a stage created it (it carries our marker).

    A missing folder is nothing to do and an empty one is removed; any other folder is refused, so a
    mistyped RUN (``--out ~``) never deletes what someone else keeps there (``~/data``).

    Raises:
        InputError: `path` holds files but no marker of ours, or is a file.
    """
    fs, p = resolve(path)
    kind = fs.get_file_info(p).type
    if kind == pafs.FileType.NotFound:
        return
    if kind != pafs.FileType.Directory:
        raise InputError(path, "is a file where hetcomp_dist keeps a folder", "choose another RUN / --out")
    if fs.get_file_info(pafs.FileSelector(p)) and _marker_id(path) is None:
        raise InputError(
            path,
            f"not a folder hetcomp_dist created (no {MARKER} marker in it): refusing to delete it",
            "choose another RUN / --out, or move the folder away yourself",
        )
    fs.delete_dir(p)


def delete_empty_dir(path: str) -> None:
    """Removes `path` when it is an empty folder; anything else is left as it is."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory and not fs.get_file_info(pafs.FileSelector(p)):
        fs.delete_dir(p)


def ensure_folder(path: str) -> None:
    """Creates `path` with our marker when it does not exist (so a later stage may clear it); an existing
    folder is left as it is, marker or not."""
    if not exists(path):
        _mark(path)


def _mark(folder: str) -> str:
    created = uuid.uuid4().hex
    write_json_atomic(marker_path(folder), {"created_by": "hetcomp_dist", "id": created})
    return created


def delete_file(path: str) -> None:
    """Removes one file when it exists."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def _tmp_name(p: str) -> str:
    head, _, tail = p.rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


@contextmanager
def _atomic(path: str) -> Iterator[tuple[pafs.FileSystem, str]]:
    """(filesystem, temporary path) for the caller to write; renamed to `path` once written. A write
    (or rename) that fails deletes its temporary file before the error goes on: no half-written
    ``.<name>.tmp-*`` is left behind for nobody to remove."""
    fs, p = resolve(path)
    fs.create_dir(p.rpartition("/")[0], recursive=True)
    tmp = _tmp_name(p)
    try:
        yield fs, tmp
        fs.move(tmp, p)
    except BaseException:
        try:
            if fs.get_file_info(tmp).type == pafs.FileType.File:
                fs.delete_file(tmp)
        except OSError:  # the original error is the one to report
            pass
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    with _atomic(path) as (fs, tmp), fs.open_output_stream(tmp) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes `obj` as JSON, atomically, with the credentials of any URI in it redacted (`redact`)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    write_bytes_atomic(path, (redact(text) + "\n").encode())


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def write_table_atomic(path: str, table: pa.Table) -> None:
    """Writes one Parquet file under a temporary name, then renames it into place."""
    with _atomic(path) as (fs, tmp):
        pq.write_table(table, tmp, filesystem=fs, compression="zstd")


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = resolve(path)
    return pq.read_table(p, filesystem=fs, columns=columns)


def write_ipc_atomic(path: str, table: pa.Table, compression: str | None = "lz4") -> None:
    """Writes one Arrow IPC file (lz4-compressed buffers by default) under a temporary name, then
    renames it into place: a stage's own intermediate files that are read back far more often than
    written (Arrow IPC holds the column buffers as they are in memory: no Parquet decoding)."""
    import pyarrow.ipc as ipc

    with (
        _atomic(path) as (fs, tmp),
        fs.open_output_stream(tmp) as f,
        ipc.new_file(f, table.schema, options=ipc.IpcWriteOptions(compression=compression)) as w,
    ):
        w.write_table(table)


def read_ipc(
    path: str, fix: str = "the folder is corrupt; delete it and rerun the stage that writes it"
) -> pa.Table:
    """An Arrow IPC file written by `write_ipc_atomic`; a missing or unreadable one is an InputError
    naming it, with `fix`."""
    import pyarrow.ipc as ipc

    if not exists(path):
        raise InputError(path, "file missing", fix)
    fs, p = resolve(path)
    try:
        with fs.open_input_file(p) as f:
            return ipc.open_file(f).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(path, f"not a readable Arrow IPC file ({e})", fix) from e


def write_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Reads an .npz without ever unpickling (object arrays are refused)."""
    import io

    if not exists(path):
        raise InputError(path, "file not found", "pass the path of an existing .npz file")
    try:
        with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        raise InputError(
            path, f"not a readable .npz of numeric arrays ({e})", "save plain arrays with numpy.savez"
        ) from e


# ------------------------------------------------------------------------------------- manifests
def _json_default(o: Any) -> Any:
    if is_dataclass(o):
        return asdict(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def config_hash(*parts: Any) -> str:
    """Stable hash of config sections (dataclasses, dicts, scalars)."""
    blob = json.dumps(parts, sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def manifest_path(stage_dir: str) -> str:
    """The manifest file of a folder (it commits the folder)."""
    return join(stage_dir, MANIFEST)


def config_path(stage_dir: str) -> str:
    """The resolved config beside a stage's manifest (see `write_manifest`)."""
    return join(stage_dir, CONFIG)


def read_manifest(stage_dir: str) -> dict | None:
    path = manifest_path(stage_dir)
    return read_json(path) if exists(path) else None


def write_manifest(
    stage_dir: str, manifest: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> None:
    """Commits a stage: written last, atomically, with the environment that produced it
    (`provenance.environment`); `config` (the resolved config as a dict) goes to ``config.yaml`` beside it."""
    from hetcomp_dist.provenance import environment

    if config is not None:
        import yaml

        write_bytes_atomic(config_path(stage_dir), yaml.safe_dump(dict(config), sort_keys=False).encode())
    body = {"schema_version": SCHEMA_VERSION, **manifest}
    body.setdefault("environment", environment())
    write_json_atomic(manifest_path(stage_dir), body)


def stage_is_done(stage_dir: str, cfg_hash: str) -> dict | None:
    """The manifest when the stage finished with this config hash, else None."""
    m = read_manifest(stage_dir)
    if m is not None and m.get("config_hash") == cfg_hash and m.get("schema_version") == SCHEMA_VERSION:
        return m
    return None


def begin_stage(stage_dir: str) -> str:
    """A stage without a matching manifest is redone from scratch: clear what a crash left.

    The folder is cleared only when a stage created it (`delete_dir`), then made again with a fresh
    marker.

    Returns:
        The marker's id: `discard_stage` removes the folder only while it still carries it.
    """
    delete_dir(stage_dir)
    return _mark(stage_dir)


def discard_stage(stage_dir: str, created: str) -> bool:
    """A failed stage's cleanup: removes `stage_dir` only when it still carries the marker `created`
    (`begin_stage`'s id), so it never deletes a folder another invocation made since. Returns whether
    it removed it."""
    if _marker_id(stage_dir) != created:
        return False
    fs, p = resolve(stage_dir)
    fs.delete_dir(p)
    return True


# --------------------------------------------------------------------------- per-user list columns
def list_to_csr(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 (n+1,), values int32) of a list<int32> column, without a Python loop."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    col = col.cast(pa.large_list(pa.int32())) if not pa.types.is_large_list(col.type) else col
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return offsets - offsets[0], values[offsets[0] : offsets[-1]]


def csr_to_list(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """list<int32> array from CSR offsets/values."""
    return pa.ListArray.from_arrays(
        pa.array(np.asarray(offsets, dtype=np.int32)), pa.array(np.asarray(values, dtype=np.int32))
    )


def dense_to_list(mat: np.ndarray, pad: int = -1) -> pa.Array:
    """list<int32> array from a (B, K) matrix whose rows may end with `pad` entries."""
    mat = np.asarray(mat)
    keep = mat != pad
    lengths = keep.sum(1)
    offsets = np.zeros(len(mat) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return csr_to_list(offsets, mat[keep])


def csr_to_dense(
    offsets: np.ndarray, values: np.ndarray, width: int | None = None, pad: int = -1
) -> np.ndarray:
    """(n, width) matrix of a CSR list column, rows right-padded with `pad` (truncated to width)."""
    lengths = np.diff(offsets)
    n = len(lengths)
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((n, width), pad, dtype=np.int32)
    pos = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)
    rows = np.repeat(np.arange(n), lengths)
    keep = pos < width
    out[rows[keep], pos[keep]] = values[keep]
    return out


def user_table(lo: int, hi: int, **columns: pa.Array | np.ndarray) -> pa.Table:
    """A shard table for users [lo, hi): `user` first, then the given columns (one row per user)."""
    cols = {"user": pa.array(np.arange(lo, hi, dtype=np.int32))}
    for k, v in columns.items():
        cols[k] = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)
        if len(cols[k]) != hi - lo:
            raise ValueError(f"column {k} has {len(cols[k])} rows for {hi - lo} users")
    return pa.table(cols)


def list_files(folder: str, suffix: str = ".parquet") -> list[str]:
    fs, p = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    base = folder.rstrip("/")
    return sorted(
        join(base, i.base_name)
        for i in infos
        if i.base_name.endswith(suffix) and not i.base_name.startswith(".")
    )


def list_dirs(folder: str) -> list[str]:
    """The sub-folders of `folder`, sorted (none when it does not exist)."""
    fs, p = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    base = folder.rstrip("/")
    return sorted(join(base, i.base_name) for i in infos if i.type == pafs.FileType.Directory)


def fingerprint(path: str) -> dict:
    """What identifies an input's content without reading it: the size and modification time of the
    file, or of every file under a folder (with their names).

    Both come from pyarrow's ``FileInfo`` on every filesystem: a local file's mtime, an object's
    ``LastModified`` on S3 / GCS (pyarrow does not expose the ETag). An edit that keeps the size and
    the modification time (to the filesystem's resolution) goes unnoticed.

    Returns:
        {"files": number of files, "bytes": their total size, "digest": hash of (name, size, mtime)}.

    Raises:
        InputError: the path does not exist.
    """
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise InputError(path, "file not found", "pass --input with an existing file (local path or URI)")
    if info.type == pafs.FileType.Directory:
        infos = [
            i for i in fs.get_file_info(pafs.FileSelector(p, recursive=True)) if i.type == pafs.FileType.File
        ]
    else:
        infos = [info]
    listing = sorted((i.path[len(p) :], i.size, i.mtime_ns) for i in infos)
    return {
        "files": len(listing),
        "bytes": sum(size for _, size, _ in listing),
        "digest": config_hash(listing),
    }


def iter_shards(folder: str, n_users: int, shard_size: int) -> Iterable[tuple[int, int, int]]:
    """(shard id, lo, hi) for every shard of a run."""
    for s in range(n_shards(n_users, shard_size)):
        lo, hi = shard_range(s, shard_size, n_users)
        yield s, lo, hi
