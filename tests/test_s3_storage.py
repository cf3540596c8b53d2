"""The storage layer and ingestion against an S3-compatible server on loopback (moto's server mode).

Nothing here configures S3 in code or files: the endpoint and the credentials come from the standard
environment variables only (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), exactly as on a cluster node,
and objects are checked independently through boto3.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hetcomp_dist import storage
from hetcomp_dist.config import DataConfig
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "hetcomp-test"


def keys(client, prefix: str) -> list[str]:
    """Object keys under `prefix`, without the empty `dir/` markers pyarrow's create_dir leaves."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


def body(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_resolve_gives_s3_for_s3_uris(s3):
    import pyarrow.fs as pafs

    fs, inner = storage.resolve(f"s3://{BUCKET}/runs/x/data/_manifest.json")
    assert isinstance(fs, pafs.S3FileSystem)
    assert inner == f"{BUCKET}/runs/x/data/_manifest.json"


def test_shards_manifest_json_npz_round_trip(s3):
    layout = RunLayout(f"s3://{BUCKET}/runs/roundtrip")
    folder = layout.split("train")
    student = layout.student("hetcomp", "mf")
    rng = np.random.default_rng(0)
    n_users, shard_size = 10, 4
    lists = [rng.choice(50, size=rng.integers(0, 6), replace=False).astype(np.int32) for _ in range(n_users)]
    for s, lo, hi in storage.iter_shards(folder, n_users, shard_size):
        offsets = np.cumsum([0] + [len(x) for x in lists[lo:hi]])
        values = np.concatenate(lists[lo:hi]) if hi > lo else np.zeros(0, np.int32)
        storage.write_table_atomic(
            storage.shard_path(folder, s),
            storage.user_table(lo, hi, items=storage.csr_to_list(offsets, values)),
        )
    manifest = {"n_users": n_users, "shard_size": shard_size, "config_hash": "abc123"}
    storage.write_manifest(layout.data, manifest)
    storage.write_json_atomic(layout.report_json, {"ok": [1, 2]})
    emb = {
        "user": rng.normal(size=(n_users, 6)).astype(np.float32),
        "item": rng.normal(size=(50, 6)).astype(np.float32),
    }
    storage.write_npz_atomic(layout.student_embeddings(student), **emb)

    # what is on the server, seen by boto3: exactly the committed objects, no temporaries left
    prefix = "runs/roundtrip/"
    assert keys(s3, prefix) == [
        prefix + k
        for k in (
            "data/_manifest.json",
            "data/train/shard-00000.parquet",
            "data/train/shard-00001.parquet",
            "data/train/shard-00002.parquet",
            "report/report.json",
            "student/hetcomp-mf/emb.npz",
        )
    ]
    # shards: read back by pyarrow over boto3's bytes, per user, against the input lists
    got = []
    for s in range(3):
        table = pq.read_table(io.BytesIO(body(s3, f"{prefix}data/train/shard-{s:05d}.parquet")))
        assert table.column_names == ["user", "items"] and table.schema.field("user").type == pa.int32()
        got += table.column("items").to_pylist()
        assert table.column("user").to_pylist() == list(range(4 * s, min(4 * s + 4, n_users)))
    assert got == [x.tolist() for x in lists]
    # and through the storage layer
    assert storage.list_files(folder) == [storage.shard_path(folder, s) for s in range(3)]
    off, vals = storage.list_to_csr(storage.read_table(storage.shard_path(folder, 1)).column("items"))
    assert [vals[off[i] : off[i + 1]].tolist() for i in range(4)] == [x.tolist() for x in lists[4:8]]
    assert storage.stage_is_done(layout.data, "abc123")["n_users"] == n_users
    assert storage.stage_is_done(layout.data, "other") is None
    assert storage.read_json(layout.report_json) == {"ok": [1, 2]}
    back = storage.read_npz(layout.student_embeddings(student))
    for k in emb:
        np.testing.assert_array_equal(back[k], emb[k])
    with np.load(io.BytesIO(body(s3, f"{prefix}student/hetcomp-mf/emb.npz")), allow_pickle=False) as z:
        np.testing.assert_array_equal(z["item"], emb["item"])

    with pytest.raises(InputError, match="not a folder hetcomp_dist created"):
        storage.delete_dir(layout.data)  # written here without begin_stage: not marked as ours
    assert storage.exists(storage.manifest_path(layout.data))
    storage.write_json_atomic(storage.marker_path(layout.data), {"id": "x"})  # as a stage marks its own
    storage.delete_dir(layout.data)
    assert not storage.exists(storage.manifest_path(layout.data))
    assert keys(s3, prefix + "data/") == []


def _interactions_csv(rng: np.random.Generator) -> bytes:
    """A small CSV with string user ids, duplicates and users below the >= 5 filter."""
    rows = []
    for u in range(40):
        n = int(rng.integers(2, 12))
        for i in rng.choice(30, size=n, replace=False):
            rows.append(f"u{u:03d},{int(i) * 7}")
    rows += rows[:5]  # duplicate pairs
    rng.shuffle(rows)
    return ("user,item\n" + "\n".join(rows) + "\n").encode()


def _read_run(run: str) -> dict:
    """Every table of RUN/data, as Python lists, keyed by relative path."""
    data = RunLayout(run).data
    manifest = storage.read_manifest(data)
    return {rel: storage.read_table(storage.join(data, rel)).to_pylist() for rel in sorted(manifest["files"])}


def test_ingest_csv_from_s3_into_an_s3_run_equals_the_local_ingest(s3, tmp_path):
    from hetcomp_dist.data.ingest import ingest

    csv = _interactions_csv(np.random.default_rng(1))
    s3.put_object(Bucket=BUCKET, Key="in/interactions.csv", Body=csv)
    (tmp_path / "interactions.csv").write_bytes(csv)
    cfg = DataConfig(format="csv", shard_size=8)
    remote_run, local_run = f"s3://{BUCKET}/runs/ingest", str(tmp_path / "run")

    m_remote = ingest(remote_run, dataclasses.replace(cfg, input=f"s3://{BUCKET}/in/interactions.csv"))
    m_local = ingest(local_run, dataclasses.replace(cfg, input=str(tmp_path / "interactions.csv")))

    # the same data, whatever the storage: every shard, the id maps and the manifest's counts
    assert _read_run(remote_run) == _read_run(local_run)
    drop = {"source", "config_hash"}  # they name the input path
    assert {k: v for k, v in m_remote.items() if k not in drop} == {
        k: v for k, v in m_local.items() if k not in drop
    }
    # independent reference: users kept = users with >= 5 distinct items in the CSV
    lines = csv.decode().split("\n")[1:-1]
    per_user: dict[str, set] = {}
    for line in lines:
        u, i = line.split(",")
        per_user.setdefault(u, set()).add(i)
    kept = sorted(u for u, items in per_user.items() if len(items) >= cfg.min_user_interactions)
    assert m_remote["n_users"] == len(kept)
    users_map = storage.read_table(RunLayout(remote_run).users_map).column("raw").to_pylist()
    assert sorted(map(str, users_map)) == kept
    assert any(k.endswith("data/_manifest.json") for k in keys(s3, "runs/ingest/"))

    # a rerun finds the committed manifest on S3 and skips
    before = body(s3, "runs/ingest/data/_manifest.json")
    assert (
        ingest(remote_run, dataclasses.replace(cfg, input=f"s3://{BUCKET}/in/interactions.csv")) == m_remote
    )
    assert body(s3, "runs/ingest/data/_manifest.json") == before


def test_ingest_of_a_missing_s3_input_fails_before_writing(s3):
    from hetcomp_dist.data.ingest import ingest

    cfg = DataConfig(format="csv", input=f"s3://{BUCKET}/in/missing.csv")
    with pytest.raises(InputError, match="missing.csv: file not found"):
        ingest(f"s3://{BUCKET}/runs/missing", cfg)
    assert keys(s3, "runs/missing/") == []


# ------------------------------------------------------------------------- one writer, redaction
HOLD = """
import sys
from hetcomp_dist.lease import RunLease
with RunLease(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_on_s3_is_refused_and_a_stale_lease_taken_over(s3, capsys):
    import json
    import os
    import subprocess
    import sys
    import time

    from hetcomp_dist.data.ingest import ingest

    s3.put_object(Bucket=BUCKET, Key="in/leased.csv", Body=_interactions_csv(np.random.default_rng(2)))
    run = f"s3://{BUCKET}/runs/leased"
    cfg = DataConfig(format="csv", shard_size=8, input=f"s3://{BUCKET}/in/leased.csv")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, run],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"RUN is in use by .* pid {holder.pid} since"):
            ingest(run, cfg)
        assert keys(s3, "runs/leased/") == ["runs/leased/_lease.json"]  # the second wrote nothing
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and keys(s3, "runs/leased/") == []  # released
    lease = {"host": "gone-host", "pid": 7, "token": "t", "started": 0.0, "heartbeat": time.time() - 1e4}
    s3.put_object(Bucket=BUCKET, Key="runs/leased/_lease.json", Body=json.dumps(lease).encode())
    assert ingest(run, cfg)["n_users"] > 0
    assert "taking over the lease of gone-host pid 7" in capsys.readouterr().err
    assert "runs/leased/_lease.json" not in keys(s3, "runs/leased/")


def test_credentials_in_an_s3_uri_stay_out_of_logs_and_manifests(s3, capsys):
    from hetcomp_dist.data.ingest import ingest

    s3.put_object(Bucket=BUCKET, Key="in/secret.csv", Body=_interactions_csv(np.random.default_rng(3)))
    # the moto server's credentials, in the URI (user info) instead of the environment
    uri = f"s3://testing:testing@{BUCKET}/in/secret.csv"
    m = ingest(f"s3://{BUCKET}/runs/secret", DataConfig(format="csv", shard_size=8, input=uri))
    assert m["source"]["input"] == f"s3://***@{BUCKET}/in/secret.csv"
    assert b"testing:testing" not in body(s3, "runs/secret/data/_manifest.json")
    assert "testing:testing" not in capsys.readouterr().err
