"""Ingestion: round trips with id maps, streaming invariance, rerun skip, every bad-input case."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hetcomp_dist import storage
from hetcomp_dist.cli import main as cli
from hetcomp_dist.config import DataConfig
from hetcomp_dist.data import ingest as ingest_mod
from hetcomp_dist.data.dataset import load_manifest, load_split
from hetcomp_dist.data.ingest import ingest, load_maps
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout


def interactions(seed: int = 0) -> list[tuple[str, str, float]]:
    """(user, item, rating) rows with string ids, duplicates, light users and low ratings."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        n = int(rng.integers(2, 25))
        for it in rng.choice(200, size=n, replace=False):
            rows.append((f"u{u:03d}", f"item-{it:03d}", float(rng.integers(1, 6))))
    rows += rows[:15]  # exact duplicates
    rows += [(u, i, 1.0) for (u, i, _r) in rows[20:30]]  # duplicate pairs with another rating
    order = rng.permutation(len(rows))
    return [rows[k] for k in order]


def reference(rows, threshold=None, min_n=5) -> dict[str, set[str]]:
    """Plain sets: raw user -> distinct raw items after the threshold and the user filter."""
    by_user: dict[str, set[str]] = {}
    for u, i, r in rows:
        if threshold is None or r >= threshold:
            by_user.setdefault(u, set()).add(i)
    return {u: s for u, s in by_user.items() if len(s) >= min_n}


def write_csv(path, rows, header=("user", "item", "rating"), sep=","):
    with open(path, "w") as f:
        f.write(sep.join(header) + "\n")
        for r in rows:
            f.write(sep.join(str(x) for x in r) + "\n")
    return str(path)


def check_run(run: str, ref: dict[str, set[str]]) -> None:
    """Manifest counts, id maps and per-user lists equal the plain-set reference."""
    m = load_manifest(run)
    users_raw, items_raw = (a.to_pylist() for a in load_maps(run))
    assert users_raw == sorted(ref) and m["n_users"] == len(ref)
    assert items_raw == sorted(set().union(*ref.values())) and m["n_items"] == len(items_raw)
    assert m["n_interactions"] == sum(len(s) for s in ref.values())
    train, valid, test = (load_split(run, s, m) for s in ("train", "valid", "test"))
    in_train = set(train.items.tolist())
    for u, raw in enumerate(users_raw):
        tr, va, te = ([items_raw[i] for i in c.row(u)] for c in (train, valid, test))
        n = len(ref[raw])
        assert len(tr) == n - 2 * (n // 5)
        assert set(tr) | set(va) | set(te) <= ref[raw]
        lost = ref[raw] - set(tr) - set(va) - set(te)  # only items no train list has, or a dropped user's
        assert all(items_raw.index(i) not in in_train for i in lost) or (not va and not te)
        assert bool(va) == bool(te)
    assert m["n_train"] == len(train.items) and m["n_eval_users"] == int((valid.lengths() > 0).sum())


def test_csv_round_trip_string_ids_rating_threshold(tmp_path):
    rows = interactions()
    path = write_csv(tmp_path / "x.csv", rows)
    cfg = DataConfig(input=path, format="csv", rating_col="rating", rating_threshold=2.0, shard_size=16)
    m = ingest(str(tmp_path / "run"), cfg)
    check_run(str(tmp_path / "run"), reference(rows, threshold=2.0))
    assert m["source"]["rows_read"] == sum(r >= 2.0 for *_x, r in rows)
    assert m["source"]["duplicates_removed"] > 0
    assert len(storage.list_files(RunLayout(str(tmp_path / "run")).split("train"))) == -(-m["n_users"] // 16)


def test_parquet_equals_csv_and_row_order_does_not_matter(tmp_path):
    rows = interactions(1)
    csv = write_csv(tmp_path / "x.csv", rows)
    ints = [(int(u[1:]), int(i.split("-")[1]), r) for u, i, r in rows]  # integer ids this time
    table = pa.table({"uid": [r[0] for r in ints[::-1]], "iid": [r[1] for r in ints[::-1]]})
    pq.write_table(table, tmp_path / "x.parquet")
    ingest(str(tmp_path / "a"), DataConfig(input=csv, format="csv", shard_size=8))
    ingest(
        str(tmp_path / "b"),
        DataConfig(
            input=str(tmp_path / "x.parquet"), format="parquet", user_col="uid", item_col="iid", shard_size=8
        ),
    )
    check_run(str(tmp_path / "b"), reference([(u, i, 0) for u, i, _ in ints]))
    # zero-padded strings sort like the integers: same dense ids, so the same splits
    for split in ("train", "valid", "test"):
        a, b = load_split(str(tmp_path / "a"), split), load_split(str(tmp_path / "b"), split)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.items, b.items)


def test_streaming_in_tiny_pieces_gives_the_same_run(tmp_path, monkeypatch):
    rows = interactions(2)
    path = write_csv(tmp_path / "x.csv", rows)
    cfg = DataConfig(input=path, format="csv", shard_size=7)
    ingest(str(tmp_path / "big"), cfg)
    monkeypatch.setattr(ingest_mod, "_PAIRS_PER_BUCKET", 37)  # many spill buckets
    ingest(str(tmp_path / "small"), cfg)
    for split in ("train", "valid", "test"):
        a, b = load_split(str(tmp_path / "big"), split), load_split(str(tmp_path / "small"), split)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.items, b.items)


def test_citeulike_format_and_rerun_skip(tmp_path, capsys):
    rng = np.random.default_rng(3)
    lines, ref = [], {}
    for u in range(40):
        items = rng.choice(90, size=int(rng.integers(0, 15)), replace=False).tolist()
        lines.append(" ".join(map(str, [len(items)] + items)))
        if len(items) >= 5:
            ref[u] = set(items)
    path = tmp_path / "users.dat"
    path.write_text("\n".join(lines))  # no trailing newline, like the real file
    run = str(tmp_path / "run")
    assert (
        cli.main(
            ["ingest", "--input", str(path), "--format", "citeulike", "--out", run, "--shard-size", "10"]
        )
        == 0
    )
    out = capsys.readouterr().out
    m = load_manifest(run)
    assert f"train {m['n_train']:,} / valid {m['n_valid']:,} / test {m['n_test']:,}" in out
    check_run(run, {k: set(v) for k, v in ref.items()})
    assert load_maps(run)[0].to_pylist() == sorted(ref)  # raw user id = 0-based line number
    manifest_path = storage.manifest_path(RunLayout(run).data)
    before = os.stat(manifest_path).st_mtime_ns
    assert (
        cli.main(
            ["ingest", "--input", str(path), "--format", "citeulike", "--out", run, "--shard-size", "10"]
        )
        == 0
    )
    assert os.stat(manifest_path).st_mtime_ns == before  # committed with the same config: skipped


# ---------------------------------------------------------------------------------- bad input
def bad(tmp_path, cfg: DataConfig, match: str) -> InputError:
    run = tmp_path / "run"
    with pytest.raises(InputError, match=match) as e:
        ingest(str(run), cfg)
    assert not storage.exists(RunLayout(str(run)).data)  # nothing written
    assert e.value.fix  # says what to do
    return e.value


def test_missing_file(tmp_path):
    e = bad(tmp_path, DataConfig(input=str(tmp_path / "nope.csv"), format="csv"), "file not found")
    assert e.where.endswith("nope.csv")  # names the file


def test_unreadable_or_wrong_format(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 10)
    bad(tmp_path, DataConfig(input=str(junk), format="citeulike"), "line 1")
    csv = write_csv(tmp_path / "x.csv", interactions())
    bad(tmp_path, DataConfig(input=csv, format="parquet"), "not a readable Parquet")
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(
        "user,item\n" + "\n".join(f"{u},{i}" for u in range(30) for i in range(6)) + "\nabc,1,2,3\n"
    )
    e = bad(tmp_path, DataConfig(input=str(mixed), format="csv"), "CSV")
    assert "mixed.csv" in e.where


def test_missing_column(tmp_path):
    csv = write_csv(tmp_path / "x.csv", interactions())
    e = bad(tmp_path, DataConfig(input=csv, format="csv", item_col="movie"), "column 'movie'")
    assert "--item-col" in e.fix and "item" in e.fix
    bad(tmp_path, DataConfig(input=csv, format="csv", rating_col="stars"), "column 'stars'")


@pytest.mark.parametrize(
    "value,match", [(-3, "negative id -3"), (2.5, "not a non-negative integer"), (None, "missing id")]
)
def test_bad_integer_ids(tmp_path, value, match):
    users = [u for u in range(20) for _ in range(6)]
    items = list(range(len(users)))
    col = [float(i) for i in items] if isinstance(value, float) else items
    col[57] = value
    pq.write_table(pa.table({"user": users, "item": col}), tmp_path / "x.parquet")
    e = bad(tmp_path, DataConfig(input=str(tmp_path / "x.parquet"), format="parquet"), match)
    assert "row 57" in e.where and "'item'" in e.where


def test_nan_and_fractional_ids_in_csv(tmp_path):
    text = "user,item\n" + "\n".join(f"{u},{i}" for u in range(10) for i in range(6))
    (tmp_path / "nan.csv").write_text(text + "\n3,NaN\n")
    e = bad(tmp_path, DataConfig(input=str(tmp_path / "nan.csv"), format="csv"), "id")
    assert "line 62" in e.where  # header + 60 rows, then the bad one
    (tmp_path / "frac.csv").write_text(text.replace("4,2", "4,2.5", 1) + "\n")
    bad(tmp_path, DataConfig(input=str(tmp_path / "frac.csv"), format="csv"), "2.5")


def test_users_dat_count_mismatch_names_the_line(tmp_path):
    path = tmp_path / "users.dat"
    path.write_text("5 1 2 3 4 5\n6 1 2 3 4 5 6\n3 7 8\n5 1 2 3 4 5\n")
    e = bad(
        tmp_path,
        DataConfig(input=str(path), format="citeulike"),
        "count field says 3 items but the line has 2",
    )
    assert e.where.endswith("line 3")
    path.write_text("5 1 2 3 4 5\n5 1 2 x 4 5\n")
    assert bad(tmp_path, DataConfig(input=str(path), format="citeulike"), "'x'").where.endswith("line 2")
    path.write_text("5 1 2 3 4 5\n\n5 1 2 3 4 5\n")
    bad(tmp_path, DataConfig(input=str(path), format="citeulike"), "empty line")
    path.write_text("2 1 -2\n")
    bad(tmp_path, DataConfig(input=str(path), format="citeulike"), "negative")


def test_empty_after_filtering(tmp_path):
    path = tmp_path / "users.dat"
    path.write_text("3 1 2 3\n4 1 2 3 4\n")
    bad(tmp_path, DataConfig(input=str(path), format="citeulike"), "no user has >= 5")
    rows = interactions()
    csv = write_csv(tmp_path / "x.csv", rows)
    e = bad(
        tmp_path,
        DataConfig(input=csv, format="csv", rating_col="rating", rating_threshold=99.0),
        "no interactions",
    )
    assert "x.csv" in e.where


def test_failed_write_leaves_no_data(tmp_path, monkeypatch):
    csv = write_csv(tmp_path / "x.csv", interactions())

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_mod, "_map_table", boom)  # fails after the shards were written
    with pytest.raises(RuntimeError):
        ingest(str(tmp_path / "run"), DataConfig(input=csv, format="csv"))
    assert not storage.exists(RunLayout(str(tmp_path / "run")).data)


def test_a_failed_write_leaves_a_folder_remade_by_someone_else(tmp_path, monkeypatch):
    csv = write_csv(tmp_path / "x.csv", interactions())
    out = RunLayout(str(tmp_path / "run")).data

    def remade(*_a, **_k):  # meanwhile another invocation cleared RUN/data and began writing it
        storage.begin_stage(out)
        storage.write_bytes_atomic(storage.join(out, "theirs.bin"), b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_mod, "_map_table", remade)
    with pytest.raises(RuntimeError):
        ingest(str(tmp_path / "run"), DataConfig(input=csv, format="csv"))
    assert storage.exists(storage.join(out, "theirs.bin"))


def test_cli_reports_input_errors(tmp_path, capsys):
    assert (
        cli.main(
            [
                "ingest",
                "--input",
                str(tmp_path / "none.dat"),
                "--format",
                "citeulike",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "file not found" in capsys.readouterr().err


def test_citeulike(citeulike_path, tmp_path):
    """The acceptance numbers of the real data (METHOD.md §1 step 4)."""
    run = str(tmp_path / "cu")
    m = ingest(run, DataConfig(input=str(citeulike_path), format="citeulike", shard_size=2000))
    assert (m["n_users"], m["n_interactions"], m["n_items"]) == (5219, 125580, 25181)
    assert m["n_train"] == 78958  # floor rule: sum of n_u - 2 floor(0.2 n_u), independent of the RNG
    assert abs(m["n_valid"] - 20823) < 300 and abs(m["n_test"] - 20823) < 300
    assert abs(m["n_eval_users"] - 4719) < 60
    assert m["files"]["train/shard-00002.parquet"] == 1219


# --------------------------------------------------------------------------- inputs that change
def test_an_edited_input_is_ingested_again(tmp_path, capsys):
    rows = interactions()
    csv = write_csv(tmp_path / "x.csv", rows)
    run = str(tmp_path / "run")
    cfg = DataConfig(input=csv, format="csv")
    first = ingest(run, cfg)
    assert ingest(run, cfg) == first and "up to date" in capsys.readouterr().err
    extra = [("u999", f"item-{i:03d}", 5.0) for i in range(7)]  # a new user, same path
    write_csv(tmp_path / "x.csv", rows + extra)
    again = ingest(run, cfg)
    assert again["n_users"] == first["n_users"] + 1
    assert again["config_hash"] != first["config_hash"]
    assert again["source"]["fingerprint"] == storage.fingerprint(csv) != first["source"]["fingerprint"]
    check_run(run, reference(rows + extra))


def _changing_reader(monkeypatch, change):
    """Makes the ingest's second read of its input go through `change(batches) -> batches`."""
    real = ingest_mod.read_interactions
    calls = []

    def reader(path, fmt, cfg):
        calls.append(path)
        batches = list(real(path, fmt, cfg))
        return iter(change(batches) if len(calls) == 2 else batches)

    monkeypatch.setattr(ingest_mod, "read_interactions", reader)


@pytest.mark.parametrize("ids", ["string", "integer"])
@pytest.mark.parametrize("change", ["new item", "new user", "rows lost"])
def test_an_input_that_changes_between_the_passes_fails(tmp_path, monkeypatch, ids, change):
    rows = [(f"u{2 * u}", f"i{2 * ((u * 7 + j) % 40)}") for u in range(30) for j in range(6)]
    if ids == "integer":
        rows = [(int(u[1:]), int(i[1:])) for u, i in rows]
    csv = write_csv(tmp_path / "x.csv", rows, header=("user", "item"))
    new = {"string": ("u3", "i3"), "integer": (3, 3)}[ids]  # between two known ids

    def changed(batches):
        users, items = batches[0]
        if change == "rows lost":
            return [(users.slice(1), items.slice(1))]
        u = pa.array([users[0].as_py() if change == "new item" else new[0]], users.type)
        i = pa.array([new[1] if change == "new item" else items[0].as_py()], items.type)
        return [(pa.concat_arrays([users, u]), pa.concat_arrays([items, i]))]

    _changing_reader(monkeypatch, changed)
    e = bad(tmp_path, DataConfig(input=csv, format="csv"), "changed while being read")
    assert e.where == csv
