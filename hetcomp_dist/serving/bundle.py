"""A serving bundle of a trained student (``hetcomp-dist export``) and the small API that queries it.

A bundle is a folder (local or object storage) that a service loads without the run:

- ``items.faiss``: ``faiss.write_index`` of a flat index over the student's item vectors, with the
  model's metric (inner product, or L2 for the metric-learning student);
- ``items.parquet``: ``row`` (the index's row) -> ``item`` (raw item id);
- ``users.parquet``: ``user`` (raw id) -> ``vector`` (the student's user vector);
- ``seen.parquet``: ``user`` (raw id) -> ``items`` (raw ids of train ∪ valid ∪ test);
- ``model.json``: metric, dim, student, method, the data/teachers/knowledge/student hashes, the
  student's metrics, and every file's size and SHA-256 (checked on load);
- ``config.yaml``: the run's resolved config.

`Bundle.recommend` runs the same exact search as ``hetcomp-dist recommend`` (`serving.topk`), so both
give the same items and scores for the same user.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from hetcomp_dist import storage
from hetcomp_dist.config import Config, EvalConfig, to_dict
from hetcomp_dist.data.dataset import load_manifest, load_range, union
from hetcomp_dist.data.idmap import IdMap, load_idmap
from hetcomp_dist.errors import InputError
from hetcomp_dist.evaluation.faiss_exact import PAD, BlockedFlatIndex
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import log
from hetcomp_dist.serving import topk
from hetcomp_dist.serving.recommend import student_folder, student_vectors

STAGE = "export"
FILES = ("items.faiss", "items.parquet", "users.parquet", "seen.parquet", "config.yaml")
FORMAT = 1


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _flat_index(item_vecs: np.ndarray, metric: str) -> faiss.Index:
    index = faiss.IndexFlatIP(item_vecs.shape[1]) if metric == "ip" else faiss.IndexFlatL2(item_vecs.shape[1])
    index.add(np.ascontiguousarray(item_vecs, dtype=np.float32))
    return index


def _hashes(run: str, smanifest: dict, data: dict) -> dict:
    layout = RunLayout(run)
    teachers = storage.read_manifest(layout.teachers) or {}
    knowledge = storage.read_manifest(layout.round(0)) or {}
    return {
        "data": data.get("config_hash"),
        "teachers": teachers.get("config_hash"),
        "knowledge": knowledge.get("config_hash"),
        "student": smanifest.get("config_hash"),
    }


def export_bundle(run: str, cfg: Config, student: str, out: str | None = None) -> str:
    """Writes the serving bundle of `student` (``<method>-<model>``) to `out` (default
    ``RUN/export/<student>``); returns the folder. Every file is checked before the first is written,
    and ``model.json`` (with the files' checksums) is written last. Holds RUN's lease
    (`hetcomp_dist.lease`) throughout, wherever the bundle goes: it reads the RUN."""
    with RunLease(run, cfg.pipeline):
        return _export_bundle(run, cfg, student, out)


def _export_bundle(run: str, cfg: Config, student: str, out: str | None) -> str:
    data = load_manifest(run)
    folder, smanifest = student_folder(run, student)
    user_vecs, item_vecs, metric = student_vectors(run, folder, data)
    out = out or RunLayout(run).export(student)
    users, items = load_idmap(run, "users", data), load_idmap(run, "items", data)
    blobs: dict[str, bytes] = {}
    blobs["items.faiss"] = faiss.serialize_index(_flat_index(item_vecs, metric)).tobytes()
    blobs["items.parquet"] = _parquet_bytes(
        pa.table({"row": pa.array(np.arange(items.n, dtype=np.int64)), "item": items.raw})
    )
    d = item_vecs.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(user_vecs.reshape(-1), pa.float32()), d)
    blobs["users.parquet"] = _parquet_bytes(pa.table({"user": users.raw, "vector": vectors}))
    blobs["seen.parquet"] = _parquet_bytes(_seen_table(run, data, users, items))
    blobs["config.yaml"] = storage.redact(yaml.safe_dump(to_dict(cfg), sort_keys=False)).encode()
    result = smanifest.get("result", {})
    method, _, model = student.partition("-")
    meta = {
        "format": FORMAT,
        "metric": metric,
        "dim": int(d),
        "student": model,
        "method": method,
        "n_users": users.n,
        "n_items": items.n,
        "hashes": _hashes(run, smanifest, data),
        "metrics": {k: result[k] for k in ("valid", "test", "best_epoch") if k in result},
        "files": {name: {"bytes": len(b), "sha256": _sha256(b)} for name, b in blobs.items()},
    }
    storage.delete_file(storage.join(out, "model.json"))  # incomplete until model.json is written again
    for name in FILES:
        storage.write_bytes_atomic(storage.join(out, name), blobs[name])
    storage.write_json_atomic(storage.join(out, "model.json"), meta)
    log(STAGE, f"{student}: bundle of {users.n:,} users x {items.n:,} items (d={d}, {metric}) in {out}")
    return out


def _seen_table(run: str, data: dict, users: IdMap, items: IdMap) -> pa.Table:
    parts = []
    S, n = int(data["shard_size"]), int(data["n_users"])
    for s in range(storage.n_shards(n, S)):
        lo, hi = storage.shard_range(s, S, n)
        seen = union(*(load_range(run, split, lo, hi, data) for split in ("train", "valid", "test")))
        order = np.lexsort((seen.items, np.repeat(np.arange(seen.n), seen.lengths())))
        parts.append(
            pa.table(
                {
                    "user": users.to_raw(np.arange(lo, hi)),
                    "items": pa.ListArray.from_arrays(
                        pa.array(seen.offsets.astype(np.int32)), items.to_raw(seen.items[order])
                    ),
                }
            )
        )
    return pa.concat_tables(parts)


@dataclass
class Bundle:
    """A loaded serving bundle (see the module doc); `load_bundle` builds it."""

    path: str
    meta: dict
    users: IdMap
    items: IdMap
    user_vecs: np.ndarray  # (n_users, d) float32
    item_vecs: np.ndarray  # (n_items, d) float32
    seen_offsets: np.ndarray  # (n_users + 1,) int64, CSR of seen dense item ids
    seen_items: np.ndarray
    index: BlockedFlatIndex

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    def _item_rows(self, raw: list | pa.Array, where: str) -> np.ndarray:
        arr = raw if isinstance(raw, pa.Array) else pa.array(list(raw))
        return self.items.dense_or_fail(arr, where, "use raw item ids of this bundle (items.parquet)")

    def recommend(
        self, users: list, k: int = 10, filter_seen: bool = True, exclude: list | None = None
    ) -> tuple[list[list], np.ndarray]:
        """Top-k raw item ids and their scores for each raw user id.

        Args:
            users: raw user ids (unknown ones are an InputError).
            k: items per user, 1 <= k <= the catalogue.
            filter_seen: leave out the items each user interacted with.
            exclude: raw item ids never returned.

        Returns:
            (per user a list of k raw item ids best first, (B, k) float32 scores).
        """
        if not 1 <= k <= self.items.n:
            raise InputError("k", f"{k} is not in [1, {self.items.n}]")
        dense = self.users.dense_or_fail(pa.array(list(users)), "users", "use raw user ids of this bundle")
        off, vals = self._exclusions(dense, filter_seen, exclude)
        ids, scores = topk.topk(self.index, self.item_vecs, self.metric, self.user_vecs[dense], k, off, vals)
        return self._raw_lists(ids), scores

    def similar_items(self, items: list, k: int = 10) -> tuple[list[list], np.ndarray]:
        """The k items closest to each raw item id under the student's metric (itself left out)."""
        if not 1 <= k < self.items.n:
            raise InputError("k", f"{k} is not in [1, {self.items.n - 1}]")
        dense = self._item_rows(items, "items")
        off = np.arange(len(dense) + 1, dtype=np.int64)
        ids, scores = topk.topk(self.index, self.item_vecs, self.metric, self.item_vecs[dense], k, off, dense)
        return self._raw_lists(ids), scores

    def _exclusions(self, dense: np.ndarray, filter_seen: bool, exclude: list | None):
        per = [np.zeros(0, np.int64)] * len(dense)
        if filter_seen:
            per = [self.seen_items[self.seen_offsets[u] : self.seen_offsets[u + 1]] for u in dense]
        if exclude:
            ex = self._item_rows(exclude, "exclude")
            per = [np.union1d(p, ex) for p in per]
        off = np.zeros(len(dense) + 1, np.int64)
        np.cumsum([len(p) for p in per], out=off[1:])
        vals = np.concatenate(per).astype(np.int64) if per else np.zeros(0, np.int64)
        return off, vals

    def _raw_lists(self, ids: np.ndarray) -> list[list]:
        out = []
        for row in ids:
            row = row[row != PAD]
            out.append(self.items.to_raw(row).to_pylist())
        return out


def load_bundle(path: str) -> Bundle:
    """Loads a bundle written by `export_bundle`, checking every file against ``model.json``.

    Raises:
        InputError: a missing file, a file whose size or checksum differs from ``model.json``, or files
            that disagree with each other (counts, dimension).
    """
    path = storage.absolute(path) or path
    meta_path = storage.join(path, "model.json")
    if not storage.exists(meta_path):
        raise InputError(meta_path, "missing: not a complete bundle", "export it again (hetcomp-dist export)")
    meta = storage.read_json(meta_path)
    blobs = {}
    for name, want in meta.get("files", {}).items():
        p = storage.join(path, name)
        if not storage.exists(p):
            raise InputError(p, "missing from the bundle", "export it again (hetcomp-dist export)")
        blob = storage.read_bytes(p)
        if len(blob) != want["bytes"] or _sha256(blob) != want["sha256"]:
            raise InputError(p, "does not match model.json (size or checksum)", "export the bundle again")
        blobs[name] = blob
    missing = [n for n in FILES if n not in blobs]
    if missing:
        raise InputError(meta_path, f"lists no {', '.join(missing)}", "export the bundle again")
    index = faiss.deserialize_index(np.frombuffer(blobs["items.faiss"], dtype=np.uint8))
    item_vecs = index.reconstruct_n(0, index.ntotal).astype(np.float32)
    items_t = pq.read_table(io.BytesIO(blobs["items.parquet"]))
    users_t = pq.read_table(io.BytesIO(blobs["users.parquet"]))
    seen_t = pq.read_table(io.BytesIO(blobs["seen.parquet"]))
    n_users, n_items, d = meta["n_users"], meta["n_items"], meta["dim"]
    if (index.ntotal, index.d, items_t.num_rows, users_t.num_rows, seen_t.num_rows) != (
        n_items,
        d,
        n_items,
        n_users,
        n_users,
    ):
        raise InputError(path, "files disagree with model.json (counts or dimension)", "export it again")
    items = IdMap("items", items_t.column("item").combine_chunks())
    users = IdMap("users", users_t.column("user").combine_chunks())
    if not np.array_equal(users.raw.to_numpy(zero_copy_only=False), seen_t.column("user").to_numpy()):
        raise InputError(
            storage.join(path, "seen.parquet"), "users differ from users.parquet", "export again"
        )
    vec = users_t.column("vector").combine_chunks()
    user_vecs = vec.values.to_numpy().reshape(n_users, d).astype(np.float32)
    seen = seen_t.column("items").combine_chunks()
    seen_off = seen.offsets.to_numpy().astype(np.int64)
    seen_items = items.to_dense(seen.flatten())
    if (seen_items < 0).any():
        raise InputError(storage.join(path, "seen.parquet"), "item ids not in items.parquet", "export again")
    return Bundle(
        path=path,
        meta=meta,
        users=users,
        items=items,
        user_vecs=user_vecs,
        item_vecs=item_vecs,
        seen_offsets=seen_off - seen_off[0],
        seen_items=seen_items,
        index=topk.build_search_index(item_vecs, meta["metric"], EvalConfig()),
    )
