"""Shard layout helpers, CSR conversions, atomic writes, stage manifests, the folder markers that
guard every recursive delete, credential redaction and input fingerprints."""

import os

import numpy as np
import pyarrow as pa
import pytest

from hetcomp_dist import storage
from hetcomp_dist.data.dataset import CSR, union
from hetcomp_dist.errors import InputError


def _lists(rng, n):
    return [list(rng.choice(50, rng.integers(0, 6), replace=False)) for _ in range(n)]


def test_csr_roundtrips_against_python_lists():
    rng = np.random.default_rng(0)
    lists = _lists(rng, 40)
    arr = pa.array(lists, type=pa.list_(pa.int32()))
    off, val = storage.list_to_csr(arr.slice(5, 30))  # sliced arrays keep their offsets
    assert [list(val[off[i] : off[i + 1]]) for i in range(30)] == lists[5:35]
    assert storage.csr_to_list(off, val).to_pylist() == lists[5:35]
    dense = storage.csr_to_dense(off, val, width=3)
    for i, row in enumerate(lists[5:35]):
        assert list(dense[i][dense[i] >= 0]) == row[:3]
    assert storage.dense_to_list(dense).to_pylist() == [r[:3] for r in lists[5:35]]


def test_csr_take_and_union():
    rng = np.random.default_rng(1)
    a, b = _lists(rng, 10), _lists(rng, 10)
    ca = CSR(*storage.list_to_csr(pa.array(a, type=pa.list_(pa.int32()))), lo=100)
    cb = CSR(*storage.list_to_csr(pa.array(b, type=pa.list_(pa.int32()))), lo=100)
    u = union(ca, cb)
    for i in range(10):
        assert list(u.row(100 + i)) == a[i] + b[i]
    t = ca.take(np.array([7, 2, 2]))
    assert [list(t.items[t.offsets[i] : t.offsets[i + 1]]) for i in range(3)] == [a[7], a[2], a[2]]
    assert list(ca.user_ids()) == [100 + i for i in range(10) for _ in a[i]]


def test_shard_ranges_cover_users_once():
    n, S = 1003, 100
    seen = np.concatenate([np.arange(*storage.shard_range(s, S, n)) for s in range(storage.n_shards(n, S))])
    assert (seen == np.arange(n)).all()
    assert storage.n_shards(0, S) == 1


def test_atomic_writes_leave_no_temporaries(tmp_path):
    folder = str(tmp_path / "stage")
    t = storage.user_table(0, 3, items=pa.array([[1], [], [2, 3]], type=pa.list_(pa.int32())))
    storage.write_table_atomic(storage.shard_path(folder, 0), t)
    storage.write_json_atomic(storage.join(folder, "x.json"), {"a": np.int64(3), "b": (1, 2)})
    assert sorted(os.listdir(folder)) == ["shard-00000.parquet", "x.json"]
    assert storage.read_table(storage.shard_path(folder, 0)).equals(t)
    assert storage.read_json(storage.join(folder, "x.json")) == {"a": 3, "b": [1, 2]}
    with pytest.raises(ValueError):
        storage.user_table(0, 2, items=pa.array([[1]], type=pa.list_(pa.int32())))


def test_failed_writes_remove_their_temporaries(tmp_path, monkeypatch):
    """A write that fails after its temporary file exists deletes it, keeps the old file and re-raises."""
    folder = str(tmp_path / "stage")
    t = storage.user_table(0, 2, items=pa.array([[1], [2]], type=pa.list_(pa.int32())))
    path = storage.shard_path(folder, 0)
    storage.write_table_atomic(path, t)
    real = storage.pq.write_table

    def half_written(table, where, **kwargs):  # the file exists, the writer dies mid-way
        real(table.slice(0, 1), where, **kwargs)
        raise OSError("disk went away")

    monkeypatch.setattr(storage.pq, "write_table", half_written)
    with pytest.raises(OSError, match="disk went away"):
        storage.write_table_atomic(path, t)
    monkeypatch.undo()
    with pytest.raises(TypeError):  # the stream is open when the write fails
        storage.write_bytes_atomic(storage.join(folder, "x.bin"), "not bytes")
    with pytest.raises(ValueError, match="compression"):  # the stream is open when the options fail
        storage.write_ipc_atomic(storage.shard_path(folder, 1, ".arrow"), t, compression="bogus")
    assert sorted(os.listdir(folder)) == ["shard-00000.parquet"]
    assert storage.read_table(path).equals(t)


def test_stage_manifest_commits_and_begin_clears(tmp_path):
    folder = str(tmp_path / "stage")
    h = storage.config_hash({"k": 1})
    assert storage.stage_is_done(folder, h) is None
    storage.begin_stage(folder)
    storage.write_bytes_atomic(storage.join(folder, "partial.bin"), b"x")
    storage.write_manifest(folder, {"config_hash": h, "n": 5})
    assert storage.stage_is_done(folder, h)["n"] == 5
    assert storage.stage_is_done(folder, storage.config_hash({"k": 2})) is None
    storage.begin_stage(folder)
    assert os.listdir(folder) == [storage.MARKER]  # cleared, and marked as a folder of ours


def test_npz_refuses_pickles(tmp_path):
    p = tmp_path / "e.npz"
    np.savez(p, user=np.zeros((2, 3), np.float32), obj=np.array([{"a": 1}], dtype=object))
    from hetcomp_dist.errors import InputError

    with pytest.raises(InputError, match="npz"):
        storage.read_npz(str(p))
    storage.write_npz_atomic(str(tmp_path / "ok.npz"), user=np.ones((2, 3), np.float32))
    assert storage.read_npz(str(tmp_path / "ok.npz"))["user"].shape == (2, 3)


# ----------------------------------------------------------------------------------- safety
def test_only_folders_we_created_are_deleted(tmp_path):
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(InputError, match="not a folder hetcomp_dist created"):
        storage.begin_stage(str(foreign))
    with pytest.raises(InputError, match=str(foreign)):
        storage.delete_dir(str(foreign))
    assert (foreign / "thesis.tex").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    storage.delete_dir(str(tmp_path / "empty"))  # an empty folder holds nothing to lose
    assert not (tmp_path / "empty").exists()
    ours = str(tmp_path / "ours")
    storage.begin_stage(ours)
    storage.write_bytes_atomic(storage.join(ours, "x.bin"), b"x")
    storage.delete_dir(ours)
    assert not os.path.exists(ours)
    storage.ensure_folder(str(foreign))  # an existing folder is not adopted
    assert not (foreign / storage.MARKER).exists()


def test_a_failed_stage_discards_only_the_folder_it_made(tmp_path):
    folder = str(tmp_path / "stage")
    created = storage.begin_stage(folder)
    storage.write_bytes_atomic(storage.join(folder, "mine.bin"), b"x")
    assert storage.discard_stage(folder, created)
    assert not os.path.exists(folder)
    created = storage.begin_stage(folder)
    storage.begin_stage(folder)  # another invocation cleared and remade it since
    storage.write_bytes_atomic(storage.join(folder, "theirs.bin"), b"y")
    assert not storage.discard_stage(folder, created)
    assert os.path.exists(storage.join(folder, "theirs.bin"))


@pytest.mark.parametrize(
    "text, secret",
    [
        ("s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@bucket/runs/x", "wJalr/XUtnFEMI+K7MDENG"),
        ("reading s3://bucket/in.csv?access_key=AKIAEXAMPLE&secret_key=abc%2Fdef&region=us", "abc%2Fdef"),
        ("gs://bucket/p?session_token=tok123 then more", "tok123"),
        ("https://user:pa55@host/x.zip", "pa55"),
    ],
)
def test_redact_removes_credentials_and_keeps_the_rest(text, secret):
    out = storage.redact(text)
    assert secret not in out and "AKIAEXAMPLE" not in out and "***" in out
    assert "bucket" in out or "host" in out
    plain = "s3://bucket/runs/x?allow_delayed_open=true /home/me/run user@example.com"
    assert storage.redact(plain) == plain


def test_manifests_and_log_lines_are_redacted(tmp_path, capsys):
    from hetcomp_dist.progress import log

    uri = "s3://AKIAEXAMPLE:s3cr3t@bucket/in.csv"
    storage.write_manifest(str(tmp_path / "stage"), {"source": {"input": uri}, "n": [uri]})
    text = (tmp_path / "stage" / storage.MANIFEST).read_text()
    assert "s3cr3t" not in text and "AKIAEXAMPLE" not in text
    assert storage.read_manifest(str(tmp_path / "stage"))["source"]["input"] == "s3://***@bucket/in.csv"
    log("ingest", f"reading {uri}")
    err = capsys.readouterr().err
    assert "s3cr3t" not in err and "s3://***@bucket/in.csv" in err


def test_fingerprint_follows_size_and_mtime(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("user,item\n1,2\n")
    first = storage.fingerprint(str(path))
    assert first == storage.fingerprint(str(path)) and first["bytes"] == path.stat().st_size
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert storage.fingerprint(str(path)) != first
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(b"1234")
    before = storage.fingerprint(str(folder))
    (folder / "b.parquet").write_bytes(b"5")
    after = storage.fingerprint(str(folder))
    assert (before["files"], after["files"], after["bytes"]) == (1, 2, 5)
    with pytest.raises(InputError, match="file not found"):
        storage.fingerprint(str(tmp_path / "missing.csv"))
