"""Ingestion: raw interactions -> dense ids, the paper's user filter and split, user-range shards.

Streaming, in four passes, never holding every user's list at once (only the id maps):

1. read the input, validate every row, collect the distinct raw user and item ids;
2. read it again, map raw ids to their sorted ranks and spill (user, item) pairs into user-range
   buckets on local temp disk; an id the first pass did not see, another row count or a new
   fingerprint (size, modification time) means the input changed under us: an `InputError`;
3. per bucket: remove duplicate pairs, count distinct items per user -> the user filter (>= 5) and
   the items that occur among kept users -> dense ids (in sorted raw-id order, so the result does
   not depend on row order). An empty result is an `InputError`, still before anything is written;
4. per bucket, in user order: dense lists -> `SplitWriter` (split, train shards, then step 3 on
   valid/test) -> ``RUN/data``; id maps; the manifest last.

A failed ingestion removes what it wrote (the ``RUN/data`` it made), so no partial one survives.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from hetcomp_dist import storage
from hetcomp_dist.config import Config, DataConfig, to_dict
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.data.readers import RawIds, check_input, read_interactions
from hetcomp_dist.data.split import SplitWriter, split_manifest
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import Progress, log

STAGE = "ingest"
_PAIRS_PER_BUCKET = 4 * 2**20


def data_hash(cfg: DataConfig, fingerprint: dict) -> str:
    """Hash of an ingestion: every config field that changes its output, and the input's fingerprint
    (`storage.fingerprint`: its size and modification time), so an edited input is ingested again."""
    return storage.config_hash("ingest", dataclasses.asdict(cfg), fingerprint)


def ingest(run: str, cfg: DataConfig, config: Config | None = None) -> dict:
    """Ingests ``cfg.input`` (format ``cfg.format``) into ``RUN/data``; returns the manifest.

    Holds RUN's lease (`hetcomp_dist.lease`, its timing from ``config.pipeline``) throughout. Skips the
    work when ``RUN/data`` is already committed with the same config and the same input fingerprint.
    `config` (the whole resolved config) is written as ``config.yaml`` beside the manifest.
    """
    with RunLease(run, config.pipeline if config is not None else None):
        out = RunLayout(run).data
        fingerprint = check_input(cfg.input, cfg.format)
        h = data_hash(cfg, fingerprint)
        done = storage.stage_is_done(out, h)
        if done is not None:
            log(STAGE, f"{out} is up to date (config {h}); skipping")
            return done
        spill = tempfile.mkdtemp(prefix="hetcomp-ingest-")
        try:
            return _ingest(run, cfg, h, fingerprint, spill, None if config is None else to_dict(config))
        finally:
            shutil.rmtree(spill, ignore_errors=True)


def _ingest(run: str, cfg: DataConfig, h: str, fingerprint: dict, spill: str, config: Mapping | None) -> dict:
    # -- pass 1: validate everything, distinct raw ids
    users, items = RawIds(cfg.user_col), RawIds(cfg.item_col)
    n_rows = 0
    prog = Progress(f"{STAGE}:scan", unit="rows")
    for u, i in read_interactions(cfg.input, cfg.format, cfg):
        users.add(u)
        items.add(i)
        n_rows += len(u)
        prog.update(len(u))
    prog.close()
    n_users_raw, n_items_raw = users.finish(), items.finish()
    if n_rows == 0:
        raise InputError(
            cfg.input,
            "no interactions (after the rating threshold)",
            "check the file, --rating-col and --rating-threshold",
        )

    # -- pass 2: spill rank pairs into user-range buckets
    n_buckets = int(np.clip(-(-n_rows // _PAIRS_PER_BUCKET), 1, 256))
    per_bucket = -(-n_users_raw // n_buckets)
    dtype = np.int32 if max(n_users_raw, n_items_raw) < 2**31 else np.int64
    files = [open(os.path.join(spill, f"b{b}.bin"), "wb") for b in range(n_buckets)]
    try:
        prog = Progress(f"{STAGE}:spill", n_rows, "rows")
        n_again = 0
        for u, i in read_interactions(cfg.input, cfg.format, cfg):
            ur, ir = users.lookup(u, cfg.input), items.lookup(i, cfg.input)
            n_again += len(u)
            b = ur // per_bucket
            order = np.argsort(b, kind="stable")
            pairs = np.stack([ur[order], ir[order]], 1).astype(dtype)
            cuts = np.searchsorted(b[order], np.arange(n_buckets + 1))
            for k in range(n_buckets):
                if cuts[k + 1] > cuts[k]:
                    pairs[cuts[k] : cuts[k + 1]].tofile(files[k])
            prog.update(len(u))
        prog.close()
    finally:
        for f in files:
            f.close()
    if n_again != n_rows or check_input(cfg.input, cfg.format) != fingerprint:
        raise InputError(
            cfg.input,
            f"changed while being read ({n_rows:,} rows on the first pass, {n_again:,} on the second, "
            "or a new size or modification time)",
            "rerun the ingest once nothing writes the input any more",
        )

    def bucket(k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (user rank, item rank) pairs of bucket k, sorted by user then item."""
        pairs = np.fromfile(os.path.join(spill, f"b{k}.bin"), dtype=dtype).reshape(-1, 2).astype(np.int64)
        key = np.unique(pairs[:, 0] * n_items_raw + pairs[:, 1])
        return key // n_items_raw, key % n_items_raw

    # -- pass 3: dedupe, user filter, items that occur
    keep_user = np.zeros(n_users_raw, dtype=bool)
    item_seen = np.zeros(n_items_raw, dtype=bool)
    n_distinct = 0
    for k in range(n_buckets):
        ur, ir = bucket(k)
        n_distinct += len(ur)
        lo_raw, hi_raw = min(k * per_bucket, n_users_raw), min((k + 1) * per_bucket, n_users_raw)
        ok = np.bincount(ur - lo_raw, minlength=hi_raw - lo_raw) >= cfg.min_user_interactions
        keep_user[lo_raw:hi_raw] = ok
        item_seen[ir[ok[ur - lo_raw]]] = True
        np.stack([ur, ir], 1).astype(dtype).tofile(os.path.join(spill, f"b{k}.bin"))
    n_users, n_items = int(keep_user.sum()), int(item_seen.sum())
    log(
        STAGE,
        f"{n_rows:,} rows, {n_rows - n_distinct:,} duplicate pairs removed; {n_users_raw:,} users -> "
        f"{n_users:,} with >= {cfg.min_user_interactions} items; {n_items:,} items occur",
    )
    if n_users == 0:
        raise InputError(
            cfg.input,
            f"no user has >= {cfg.min_user_interactions} distinct items after filtering",
            "check the id columns, --rating-threshold, or data.min_user_interactions",
        )
    user_dense = np.cumsum(keep_user) - 1
    item_dense = (np.cumsum(item_seen) - 1).astype(np.int32)

    # -- pass 4: write (everything above validated the input; from here on, clean up on failure)
    layout = RunLayout(run)
    out = layout.data
    created = storage.begin_stage(out)
    try:
        writer = SplitWriter(
            layout, n_users, n_items, cfg.shard_size, cfg.seed, cfg.test_frac, cfg.valid_frac, STAGE
        )
        for k in range(n_buckets):
            pairs = np.fromfile(os.path.join(spill, f"b{k}.bin"), dtype=dtype).reshape(-1, 2)
            ur, ir = pairs[:, 0].astype(np.int64), pairs[:, 1]
            sel = keep_user[ur]
            lo_raw, hi_raw = min(k * per_bucket, n_users_raw), min((k + 1) * per_bucket, n_users_raw)
            lo = int(user_dense[lo_raw - 1] + 1) if lo_raw else 0
            n_here = int(keep_user[lo_raw:hi_raw].sum())
            du = user_dense[ur[sel]] - lo
            writer.add(CSR(_offsets(np.bincount(du, minlength=n_here)), item_dense[ir[sel]], lo))
        counts = writer.finish()
        storage.write_table_atomic(layout.users_map, _map_table(users.values.filter(pa.array(keep_user))))
        storage.write_table_atomic(layout.items_map, _map_table(items.values.filter(pa.array(item_seen))))
        files = {
            **writer.files,
            storage.relative(layout.users_map, out): n_users,
            storage.relative(layout.items_map, out): n_items,
        }
        source = {
            "kind": "file",
            "input": cfg.input,
            "fingerprint": fingerprint,
            "format": cfg.format,
            "rows_read": n_rows,
            "duplicates_removed": n_rows - n_distinct,
            "users_raw": n_users_raw,
            "items_raw": n_items_raw,
            "min_user_interactions": cfg.min_user_interactions,
            "user_col": cfg.user_col,
            "item_col": cfg.item_col,
            "rating_col": cfg.rating_col,
            "rating_threshold": cfg.rating_threshold,
        }
        manifest = split_manifest(counts, n_items, cfg.shard_size, cfg.seed, h, files, source)
        storage.write_manifest(out, manifest, config)
    except BaseException:
        storage.discard_stage(out, created)  # only while the folder is still the one made above
        raise
    log(STAGE, f"committed {out}")
    return storage.read_manifest(out)


def _offsets(counts: np.ndarray) -> np.ndarray:
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return off


def _map_table(raw: pa.Array) -> pa.Table:
    return pa.table({"id": pa.array(np.arange(len(raw), dtype=np.int32)), "raw": raw})


def load_maps(run: str) -> tuple[pa.Array, pa.Array]:
    """(users raw ids, items raw ids), indexed by dense id."""
    layout = RunLayout(run)
    return (
        storage.read_table(layout.users_map).column("raw").combine_chunks(),
        storage.read_table(layout.items_map).column("raw").combine_chunks(),
    )
