"""`recommend` and the serving bundle against a brute-force reference written here: per user, every
item scored in float64, the user's seen items (train ∪ valid ∪ test) dropped, sorted by (score desc,
item id asc), mapped to raw ids through the maps read directly with pyarrow."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hetcomp_dist import load_bundle, storage
from hetcomp_dist.cli import main as cli
from hetcomp_dist.config import DataConfig, load_config
from hetcomp_dist.data.dataset import load_manifest, load_split
from hetcomp_dist.data.ingest import ingest
from hetcomp_dist.errors import InputError
from hetcomp_dist.serving.bundle import export_bundle
from hetcomp_dist.serving.recommend import Request, read_recommendations, recommend
from hetcomp_dist.testing.students import write_student

D = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    """A run ingested from a CSV with string ids (3 shards), and a finished hetcomp-mf student whose
    item vectors repeat (exact score ties) and an ml student (l2)."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("rec")
    lines = ["user,item"]
    for u in range(70):
        for i in rng.choice(45, size=int(rng.integers(5, 18)), replace=False):
            lines.append(f"user-{u:03d},it{i:02d}")
    csv = root / "inter.csv"
    csv.write_text("\n".join(lines) + "\n")
    run = str(root / "run")
    ingest(run, DataConfig(input=str(csv), format="csv", shard_size=32))
    m = load_manifest(run)
    user = rng.standard_normal((m["n_users"], D)).astype(np.float32)
    item = rng.standard_normal((m["n_items"], D)).astype(np.float32)
    item[7] = item[3]  # exact ties: equal scores, the smaller id first
    item[20] = item[3]
    user[5] = 0.0  # a user for whom every item ties
    write_student(run, "hetcomp-mf", user, item, "ip")
    write_student(run, "hetcomp-ml", user, item, "l2")
    return run


def cfg_of(run: str, *over: str):
    return load_config(None, list(over), run=run)


def maps(run: str) -> tuple[list, list]:
    users = pq.read_table(f"{run}/data/maps/users.parquet").column("raw").to_pylist()
    items = pq.read_table(f"{run}/data/maps/items.parquet").column("raw").to_pylist()
    return users, items


def seen_sets(run: str) -> list[set[int]]:
    parts = [load_split(run, s) for s in ("train", "valid", "test")]
    return [set().union(*(set(p.row(u).tolist()) for p in parts)) for u in range(parts[0].n)]


def brute(run, student, k, users=None, include_seen=False, allowed=None):
    """{raw user: (raw items, float32 scores)} by a plain per-user loop."""
    emb = np.load(f"{run}/student/{student}/emb.npz")
    U, V = emb["user"].astype(np.float64), emb["item"].astype(np.float64)
    l2 = student.endswith("-ml")
    raw_u, raw_i = maps(run)
    seen = seen_sets(run)
    out = {}
    for u in users if users is not None else range(len(raw_u)):
        s = -((V - U[u]) ** 2).sum(1) if l2 else V @ U[u]
        cand = [
            i
            for i in range(len(V))
            if (include_seen or i not in seen[u]) and (allowed is None or i in allowed)
        ]
        top = sorted(cand, key=lambda i: (-s[i], i))[:k]
        out[raw_u[u]] = ([raw_i[i] for i in top], [np.float32(s[i]) for i in top])
    return out


def as_dict(table: pa.Table) -> dict:
    return {r["user"]: (r["items"], r["scores"]) for r in table.to_pylist()}


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for u, (items, scores) in want.items():
        assert got[u][0] == items, u
        np.testing.assert_allclose(np.array(got[u][1], np.float32), np.array(scores, np.float32), rtol=1e-6)


@pytest.mark.parametrize("student", ["hetcomp-mf", "hetcomp-ml"])
def test_every_user_equals_brute_force(run, tmp_path, student):
    out = str(tmp_path / "recs")
    m = recommend(run, cfg_of(run), Request(student=student, k=12, out=out, distributed=False))
    table = read_recommendations(out)
    assert table.schema.field("user").type == pa.string() and table.schema.field("scores").type == pa.list_(
        pa.float32()
    )
    assert m["n_users"] == table.num_rows == load_manifest(run)["n_users"]
    assert not any(table.column("cold_start").to_pylist())
    assert table.column("user").to_pylist() == maps(run)[0]  # shards in user order
    assert_same(as_dict(table), brute(run, student, 12))
    assert sorted(storage.list_files(out)) == [storage.shard_path(out, s) for s in range(3)]


def test_ray_map_equals_in_process(run, tmp_path, ray_session):
    a, b = str(tmp_path / "local"), str(tmp_path / "ray")
    recommend(run, cfg_of(run), Request(k=9, out=a, distributed=False))
    m = recommend(run, cfg_of(run), Request(k=9, out=b, distributed=True))
    assert m["distributed"] is True
    assert read_recommendations(a).equals(read_recommendations(b))


def test_users_file_unknown_ids_and_cold_start(run, tmp_path):
    raw_u, raw_i = maps(run)
    f = tmp_path / "users.txt"
    f.write_text(f"{raw_u[40]}\n{raw_u[2]}\nnobody\n\n{raw_u[2]}\nghost\n")
    out = str(tmp_path / "some")
    with pytest.raises(InputError, match="2 unknown user id.*nobody, ghost"):
        recommend(run, cfg_of(run), Request(k=5, users_file=str(f), out=out))
    assert not storage.exists(out), "nothing written"
    recommend(run, cfg_of(run), Request(k=5, users_file=str(f), out=out, cold_start="popular"))
    table = read_recommendations(out)
    got = as_dict(table)
    assert_same({u: got[u] for u in (raw_u[2], raw_u[40])}, brute(run, "hetcomp-mf", 5, users=[2, 40]))
    cold = table.filter(table.column("cold_start"))
    assert sorted(cold.column("user").to_pylist()) == ["ghost", "nobody"]
    train = load_split(run, "train")
    counts = np.bincount(train.items, minlength=len(raw_i))
    popular = sorted(range(len(raw_i)), key=lambda i: (-counts[i], i))[:5]
    assert all(r == [raw_i[i] for i in popular] for r in cold.column("items").to_pylist())


def test_include_seen_and_business_rules(run, tmp_path):
    _, raw_i = maps(run)
    only, exclude = tmp_path / "only.txt", tmp_path / "exclude.txt"
    only.write_text("\n".join(raw_i[:30]) + "\n")
    exclude.write_text(f"{raw_i[3]}\n{raw_i[11]}\n")
    out = str(tmp_path / "rules")
    req = Request(k=8, out=out, include_seen=True, only_file=str(only), exclude_file=str(exclude))
    recommend(run, cfg_of(run), req)
    allowed = set(range(30)) - {3, 11}
    assert_same(
        as_dict(read_recommendations(out)), brute(run, "hetcomp-mf", 8, include_seen=True, allowed=allowed)
    )


@pytest.mark.parametrize(
    "req, match",
    [
        (Request(student="hetcomp-xx"), "not a student name"),
        (Request(student="rrd-mf"), "no finished student rrd-mf"),
        (Request(k=0), r"0 is not in \[1, "),
        (Request(k=10_000), r"10000 is not in \[1, "),
        (Request(cold_start="maybe"), "not one of"),
    ],
)
def test_bad_requests_fail_before_writing(run, tmp_path, req, match):
    out = str(tmp_path / "bad")
    with pytest.raises(InputError, match=match):
        recommend(run, cfg_of(run), Request(**{**req.__dict__, "out": out}))
    assert not storage.exists(out)


def test_unknown_item_ids_in_rule_files(run, tmp_path):
    f = tmp_path / "ex.txt"
    f.write_text("it01\nnot-an-item\n")
    with pytest.raises(InputError, match=f"{f}.*1 unknown item id.*not-an-item"):
        recommend(run, cfg_of(run), Request(exclude_file=str(f), out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_rerun_is_skipped_and_a_change_redone(run, tmp_path, capsys):
    out = str(tmp_path / "again")
    first = recommend(run, cfg_of(run), Request(k=4, out=out))
    assert recommend(run, cfg_of(run), Request(k=4, out=out)) == first
    assert "up to date" in capsys.readouterr().err
    assert recommend(run, cfg_of(run), Request(k=6, out=out))["k"] == 6
    assert all(len(r) == 6 for r in read_recommendations(out).column("items").to_pylist())


def test_a_foreign_out_folder_is_refused(run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a recommend output"):
        recommend(run, cfg_of(run), Request(k=5, out=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_default_output_folder(run, capsys):
    assert cli.main(["recommend", "--run", run, "--k", "3"]) == 0
    table = read_recommendations(f"{run}/recommend/hetcomp-mf")
    assert_same(as_dict(table), brute(run, "hetcomp-mf", 3))
    assert cli.main(["recommend", "--run", run, "--k", "-1"]) == 2
    assert "--k: -1 is not in [1, " in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bundle
def test_bundle_agrees_with_recommend_and_brute_force(run, tmp_path):
    out, bdir = str(tmp_path / "r"), str(tmp_path / "bundle")
    recommend(run, cfg_of(run), Request(k=7, out=out))
    export_bundle(run, cfg_of(run), "hetcomp-mf", bdir)
    b = load_bundle(bdir)
    want = as_dict(read_recommendations(out))
    users = list(want)[::3]
    ids, scores = b.recommend(users, k=7)
    assert [(i, list(s)) for i, s in zip(ids, scores)] == [want[u] for u in users]
    # exclusions on top of the seen items, and similar items by brute force
    raw_u, raw_i = maps(run)
    ids, _ = b.recommend([raw_u[0]], k=5, exclude=[want[raw_u[0]][0][0]])
    assert ids[0] == [i for i in want[raw_u[0]][0] if i != want[raw_u[0]][0][0]][:5]
    V = np.load(f"{run}/student/hetcomp-mf/emb.npz")["item"].astype(np.float64)
    sims, _ = b.similar_items([raw_i[4]], k=6)
    s = V @ V[4]
    assert sims[0] == [
        raw_i[i] for i in sorted((i for i in range(len(V)) if i != 4), key=lambda i: (-s[i], i))[:6]
    ]
    ids, _ = b.recommend([raw_u[1]], k=4, filter_seen=False)
    assert ids[0] == brute(run, "hetcomp-mf", 4, users=[1], include_seen=True)[raw_u[1]][0]


def test_bundle_files_are_checked(run, tmp_path):
    bdir = tmp_path / "b"
    export_bundle(run, cfg_of(run), "hetcomp-mf", str(bdir))
    data = bytearray((bdir / "users.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bdir / "users.parquet").write_bytes(bytes(data))
    with pytest.raises(InputError, match="users.parquet: does not match model.json"):
        load_bundle(str(bdir))
    (bdir / "seen.parquet").unlink()
    with pytest.raises(InputError, match="seen.parquet: missing"):
        load_bundle(str(bdir))
    with pytest.raises(InputError, match="unknown user id"):
        export_bundle(run, cfg_of(run), "hetcomp-mf", str(tmp_path / "ok"))
        load_bundle(str(tmp_path / "ok")).recommend(["no-such-user"])


def test_bundle_and_recommend_on_s3(run, s3):
    out, bdir = "s3://hetcomp-test/recs/hetcomp-mf", "s3://hetcomp-test/bundles/hetcomp-mf"
    recommend(run, cfg_of(run), Request(k=6, out=out))
    export_bundle(run, cfg_of(run), "hetcomp-mf", bdir)
    want = as_dict(read_recommendations(out))
    assert_same(want, brute(run, "hetcomp-mf", 6))
    b = load_bundle(bdir)
    users = list(want)
    ids, scores = b.recommend(users, k=6)
    assert [(i, list(s)) for i, s in zip(ids, scores)] == [want[u] for u in users]


@pytest.mark.citeulike
def test_citeulike_every_user_equals_brute_force_and_the_bundle_agrees(tmp_path, citeulike_path):
    """The issue's acceptance on the real data: every CiteULike user's top-50 from a d = 6 student equals a
    numpy top-K (all seen items excluded, ties by item id, raw ids); the bundle gives the same lists."""
    run = str(tmp_path / "cu")
    ingest(run, DataConfig(input=str(citeulike_path), format="citeulike"))
    m = load_manifest(run)
    rng = np.random.default_rng(0)
    user = rng.standard_normal((m["n_users"], 6)).astype(np.float32)
    item = rng.standard_normal((m["n_items"], 6)).astype(np.float32)
    write_student(run, "hetcomp-mf", user, item, "ip")
    out, k = str(tmp_path / "recs"), 50
    recommend(run, cfg_of(run), Request(k=k, out=out, distributed=False))
    got = as_dict(read_recommendations(out))
    raw_u, raw_i = maps(run)
    parts = [load_split(run, s) for s in ("train", "valid", "test")]
    U, V = user.astype(np.float64), item.astype(np.float64)
    want = {}
    for lo in range(0, m["n_users"], 1024):  # a block of users at a time: scores, seen masked, lexsort
        hi = min(lo + 1024, m["n_users"])
        s = U[lo:hi] @ V.T
        for p in parts:
            rows = np.repeat(np.arange(hi - lo), np.diff(p.offsets[lo : hi + 1]))
            s[rows, p.items[p.offsets[lo] : p.offsets[hi]]] = -np.inf
        for r in range(hi - lo):
            top = np.lexsort((np.arange(len(V)), -s[r]))[:k]
            want[raw_u[lo + r]] = [raw_i[i] for i in top]
    assert len(got) == m["n_users"] == 5219
    assert {u: items for u, (items, _) in got.items()} == want
    export_bundle(run, cfg_of(run), "hetcomp-mf", str(tmp_path / "bundle"))
    users = raw_u[::7]
    ids, _ = load_bundle(str(tmp_path / "bundle")).recommend(users, k=k)
    assert ids == [want[u] for u in users]
