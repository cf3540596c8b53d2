"""Bring your own teacher: implicit's BPR, trained outside the package and written to Parquet with raw ids,
imported into an ingested run (string user ids, integer item ids), then used by knowledge round 0 and a
HetComp student beside built-in teachers; every bad input refused before anything is written; the CLI
with relative paths.

The references share no code with the import: plain dicts over the raw ids and per-user loops.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_knowledge_math import ref_g

from hetcomp_dist import storage
from hetcomp_dist.config import TEACHER_NAMES, Config, load_config
from hetcomp_dist.data.ingest import ingest
from hetcomp_dist.data.synth import generate_block, item_model
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.teachers.imported import builtin_teachers, import_teacher

K = 50  # knowledge.topk = teachers.topk of these runs
SHARD = 64
SETTINGS = [
    f"teachers.topk={K}",
    f"knowledge.topk={K}",
    f"baselines.topk={K}",
    "knowledge.d_k=20",
    "knowledge.pos_k=5",
    "data.shard_size=64",
]
LONELY = "lonely"  # a user whose valid and test items nobody has in train: not evaluated


# ------------------------------------------------------------------------------------ the run
def _cfg(run: str, *overrides: str) -> Config:
    return load_config(None, [*SETTINGS, *overrides], run=run)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An ingested run (raw users "u<...>", raw items 1000 + 3 i) and implicit BPR's four states."""
    from hetcomp_dist.config import DataConfig, SynthConfig

    root = tmp_path_factory.mktemp("import")
    synth = SynthConfig(users=240, items=150, seed=5, mean_interactions=15, max_interactions=40)
    lists = generate_block(synth, item_model(synth), 0)
    users, items = [], []
    for u in range(lists.n):
        for i in lists.row(u):
            users.append(f"u{7 * u + 3:05d}")
            items.append(1000 + 3 * int(i))
    users += [LONELY] * 5
    items += [9000 + j for j in range(5)]  # items of its own: its valid and test items leave the split
    src = str(root / "interactions.parquet")
    pq.write_table(pa.table({"user": users, "item": pa.array(items, pa.int64())}), src)
    run = str(root / "run")
    ingest(run, DataConfig(input=src, format="parquet", shard_size=SHARD))
    data = _plain_data(run)
    assert LONELY in data["users"] and LONELY not in data["evaluated"]
    files = _bpr_files(run, data, root)
    return run, data, files


def _plain_data(run: str) -> dict:
    """The run's maps and splits as plain Python: raw ids, lists by raw user."""
    layout = RunLayout(run)
    users = pq.read_table(layout.users_map).to_pydict()
    items = pq.read_table(layout.items_map).to_pydict()
    user_raw = dict(zip(users["id"], users["raw"]))
    item_raw = dict(zip(items["id"], items["raw"]))
    splits = {}
    for split in ("train", "valid", "test"):
        rows = {}
        for path in storage.list_files(layout.split(split)):
            t = pq.read_table(path).to_pydict()
            rows.update({user_raw[u]: [item_raw[i] for i in its] for u, its in zip(t["user"], t["items"])})
        splits[split] = rows
    return {
        "users": [user_raw[u] for u in range(len(user_raw))],
        "items": [item_raw[i] for i in range(len(item_raw))],
        "user_id": {r: u for u, r in user_raw.items()},
        "item_id": {r: i for i, r in item_raw.items()},
        **splits,
        "evaluated": {u for u in user_raw.values() if splits["valid"][u] and splits["test"][u]},
    }


def _bpr_files(run: str, data: dict, root) -> list[str]:
    """implicit's BPR on the run's train lists at 4 training lengths, each written as a teacher state: E1-E3
    its top K + 5 with train items filtered, E4 its top K + |train| unfiltered (train items in it)."""
    import scipy.sparse as sp

    pytest.importorskip("implicit")
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    n_users, n_items = len(data["users"]), len(data["items"])
    rows, cols = [], []
    for u, raw in enumerate(data["users"]):
        for it in data["train"][raw]:
            rows.append(u)
            cols.append(data["item_id"][it])
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    files = []
    for e, iterations in enumerate((3, 8, 20, 40)):
        model = BayesianPersonalizedRanking(
            factors=16, learning_rate=0.05, iterations=iterations, num_threads=1, random_state=0
        )
        model.fit(matrix, show_progress=False)
        last = e == 3
        ids, _ = model.recommend(
            np.arange(n_users), matrix, N=n_items if last else K + 5, filter_already_liked_items=not last
        )
        out = []
        for u, raw in enumerate(data["users"]):
            n = K + len(data["train"][raw]) if last else K + 5
            out.append([data["items"][i] for i in ids[u][:n]])
        path = str(root / f"bpr-e{e + 1}.parquet")
        pq.write_table(pa.table({"user": data["users"], "items": pa.array(out, pa.list_(pa.int64()))}), path)
        files.append(path)
    return files


def _copy_run(base_run: str, dest) -> str:
    import shutil

    run = str(dest)
    shutil.copytree(RunLayout(base_run).data, RunLayout(run).data)
    return run


def _read_file(path: str) -> dict:
    t = pq.read_table(path).to_pydict()
    return dict(zip(t["user"], t["items"]))


def _write_file(path, rows: dict) -> str:
    users = list(rows)
    pq.write_table(
        pa.table({"user": users, "items": pa.array([rows[u] for u in users], pa.list_(pa.int64()))}),
        str(path),
    )
    return str(path)


# ------------------------------------------------------------------------------ plain references
def ref_states(data: dict, files: list[str]) -> list[dict]:
    """Per state, raw user -> its first K listed items outside its train list, as dense ids."""
    out = []
    for path in files:
        rows = _read_file(path)
        state = {}
        for raw in data["users"]:
            train = set(data["train"][raw])
            kept = [it for it in rows[raw] if it not in train][:K]
            state[raw] = [data["item_id"][it] for it in kept]
        out.append(state)
    return out


def ref_observed(data: dict, ranked_path: str) -> dict:
    """Raw user -> dense train items: those in the file's list in its order, then by train frequency."""
    rows = _read_file(ranked_path)
    freq = {}
    for its in data["train"].values():
        for it in its:
            freq[it] = freq.get(it, 0) + 1
    out = {}
    for raw in data["users"]:
        train = data["train"][raw]
        listed = [it for it in rows.get(raw, []) if it in set(train)]
        rest = sorted(
            (it for it in train if it not in set(listed)), key=lambda it: (-freq[it], data["item_id"][it])
        )
        out[raw] = [data["item_id"][it] for it in listed + rest]
    return out


def ref_metrics(data: dict, state: dict, split: str, ks=(10, 50)) -> dict:
    """Recall/NDCG@k of each evaluated user's list without the other held-out split's items."""
    other = "test" if split == "valid" else "valid"
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("R", "N")}
    for raw in data["evaluated"]:
        drop = {data["item_id"][it] for it in data[other][raw]}
        gt = {data["item_id"][it] for it in data[split][raw]}
        top = [i for i in state[raw] if i not in drop][: max(ks)]
        for k in ks:
            hits = [1.0 if i in gt else 0.0 for i in top[:k]]
            sums[f"R@{k}"] += sum(hits) / len(gt)
            idcg = sum(1 / math.log2(t + 2) for t in range(min(len(gt), k)))
            sums[f"N@{k}"] += sum(h / math.log2(t + 2) for t, h in enumerate(hits)) / idcg
    return {key: v / len(data["evaluated"]) for key, v in sums.items()}


def _shard_rows(folder: str, column: str = "items") -> dict:
    rows = {}
    for path in storage.list_files(folder):
        t = pq.read_table(path).to_pydict()
        rows.update(dict(zip(t["user"], t[column])))
    return rows


# ------------------------------------------------------------------------------------- the flow
def test_imported_bpr_reaches_knowledge_and_a_student(base, tmp_path, monkeypatch):
    from hetcomp_dist.knowledge.rounds import build_round0
    from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report
    from hetcomp_dist.student.trainer import train_student
    from hetcomp_dist.teachers import actors
    from hetcomp_dist.testing.trajectories import write_trajectories

    base_run, data, files = base
    run = _copy_run(base_run, tmp_path / "run")
    layout = RunLayout(run)
    write_trajectories(run, _cfg(run, "teachers.names=[mf, ml]"), seed=3)
    cfg = _cfg(
        run,
        "teachers.names=[mf, bpr, ml]",
        "knowledge.distributed_min_users=1000000000",
        "student.num_workers=0",
        "student.batch_size=256",
        "student.max_epochs=4",
        "student.eval_every=2",
        "knowledge.period=2",
    )
    m = import_teacher(run, cfg, "bpr", files)  # no --observed: the E4 file's order
    # the states: train items dropped, first K kept, in dense ids; the observed order's fallback
    states = ref_states(data, files)
    for e in range(4):
        got = _shard_rows(layout.teacher_state("bpr", e + 1))
        assert {data["users"][u]: v for u, v in got.items()} == states[e]
    observed = ref_observed(data, files[3])
    got = _shard_rows(layout.teacher_observed("bpr"))
    assert {data["users"][u]: v for u, v in got.items()} == observed
    # evaluated like the others: the E4 list through the protocol
    for split in ("valid", "test"):
        ref = ref_metrics(data, states[3], split)
        assert m[split] == pytest.approx(ref, abs=1e-12)
    metrics = storage.read_json(layout.teacher_metrics("bpr"))
    assert [s["state"] for s in metrics["states"]] == [1, 2, 3, 4] and metrics["users_without_lists"] == 0
    # the teachers stage takes it as it is (no actor); alone, the ensemble g is the teacher itself
    alone = _cfg(run, "teachers.names=[bpr]")
    monkeypatch.setattr(actors, "start_teachers", lambda *a: pytest.fail("nothing to train"))
    summary = actors.train_teachers(run, alone)
    assert summary["trained"] == [] and summary["teachers"]["bpr"]["test"] == m["test"]
    report = ensemble_report(run, alone)
    for split in ("valid", "test"):
        assert report["ensemble"][split] == pytest.approx(report["teachers"]["bpr"][split], abs=1e-12)
    # round 0: targets = g of the three teachers' E1 lists, P+ = g of their observed orders
    r0 = build_round0(run, cfg)
    assert r0["teachers"] == ["mf", "bpr", "ml"]
    e1 = {name: _shard_rows(layout.teacher_state(name, 1)) for name in ("mf", "ml")}
    obs = {name: _shard_rows(layout.teacher_observed(name)) for name in ("mf", "ml")}
    targets, pos = _shard_rows(layout.round(0), "targets"), _shard_rows(layout.pos)
    for u, raw in enumerate(data["users"]):
        want = ref_g([e1["mf"][u], states[0][raw], e1["ml"][u]], K)
        assert [i for i in targets[u] if i >= 0] == [i for i in want if i >= 0], raw
        want_pos = ref_g([obs["mf"][u], observed[raw], obs["ml"][u]], cfg.knowledge.pos_k)
        assert pos[u] == [i for i in want_pos if i >= 0], raw
    # a short HetComp student on that knowledge, with a DKC round that reads the imported states
    res = train_student(run, cfg)
    assert res["epochs"] == 4 and np.isfinite(res["test"]["R@50"])
    rounds = layout.student_rounds(layout.student("hetcomp", "mf"))
    assert "bpr" in storage.read_manifest(layout.round(1, rounds))["means"]


def test_absent_unevaluated_user_gets_empty_lists(base, tmp_path):
    base_run, data, files = base
    run = _copy_run(base_run, tmp_path / "run")
    cut = []
    for e, path in enumerate(files):
        rows = _read_file(path)
        del rows[LONELY]
        cut.append(_write_file(tmp_path / f"e{e}.parquet", rows))
    import_teacher(run, _cfg(run), "bpr", cut)
    u = data["user_id"][LONELY]
    layout = RunLayout(run)
    for e in range(4):
        assert _shard_rows(layout.teacher_state("bpr", e + 1))[u] == []
    assert len(_shard_rows(layout.teacher_observed("bpr"))[u]) == len(data["train"][LONELY])
    assert storage.read_json(layout.teacher_metrics("bpr"))["users_without_lists"] == 1


def test_rerun_skips_and_a_changed_file_imports_again(base, tmp_path):
    base_run, data, files = base
    run = _copy_run(base_run, tmp_path / "run")
    own = [_write_file(tmp_path / f"e{e}.parquet", _read_file(p)) for e, p in enumerate(files)]
    cfg = _cfg(run)
    first = import_teacher(run, cfg, "bpr", own)
    shard = storage.shard_path(RunLayout(run).teacher_state("bpr", 1), 0)
    before = os.stat(shard).st_mtime_ns
    assert import_teacher(run, cfg, "bpr", own) == first and os.stat(shard).st_mtime_ns == before
    rows = _read_file(own[0])
    raw = data["users"][0]
    rows[raw] = rows[raw][1:] + rows[raw][:1]  # the user's best item moves to the end
    _write_file(own[0], rows)
    second = import_teacher(run, cfg, "bpr", own)
    assert second["config_hash"] != first["config_hash"]
    assert _shard_rows(RunLayout(run).teacher_state("bpr", 1))[0] == ref_states(data, own[:1])[0][raw]


# ------------------------------------------------------------------------------------ bad input
def _bad(case: str, rows: dict, data: dict) -> str:
    """Breaks the E2 file's rows in place; returns the message the import must give."""
    users = list(rows)
    evaluated = [u for u in users if u in data["evaluated"]]
    if case == "unknown item":
        rows[users[5]] = rows[users[5]][:3] + [424242] + rows[users[5]][3:]
        return "row 5: item id 424242 is not in the run's id maps (1 unknown item ids"
    if case == "unknown user":
        rows["nobody"] = rows[users[0]]
        return f"row {len(users)}: user id 'nobody' is not in the run's id maps"
    if case == "another run's maps":
        for u in users:
            rows[u] = [it + 1 for it in rows[u]]  # the items of a run with other raw ids
        return "are not in this run's id maps (row 0:"
    if case == "missing user":
        del rows[evaluated[2]], rows[evaluated[7]]
        return f"2 evaluated user(s) missing (users with valid and test items), the first '{evaluated[2]}'"
    if case == "short list":
        train = set(data["train"][users[9]])
        rows[users[9]] = [it for it in rows[users[9]] if it not in train][: K - 1] + sorted(train)
        return f"row 9: {K - 1} items outside the user's train list"
    if case == "repeated item":
        rows[users[4]] = rows[users[4]][:2] + rows[users[4]][:1] + rows[users[4]][2:]
        return f"row 4: item {rows[users[4]][0]} appears twice"
    raise ValueError(case)


@pytest.mark.parametrize(
    "case",
    ["unknown item", "unknown user", "another run's maps", "missing user", "short list", "repeated item"],
)
def test_bad_files_are_refused_before_anything_is_written(base, tmp_path, case):
    base_run, data, files = base
    run = _copy_run(base_run, tmp_path / "run")
    rows = _read_file(files[1])
    message = _bad(case, rows, data)
    bad = _write_file(tmp_path / "e2.parquet", rows)
    with pytest.raises(InputError) as e:
        import_teacher(run, _cfg(run), "bpr", [files[0], bad, files[2], files[3]])
    assert str(e.value).startswith(bad) and message in str(e.value), str(e.value)
    assert not os.path.exists(RunLayout(run).teacher("bpr"))


def test_duplicate_user_wrong_columns_and_missing_files(base, tmp_path):
    base_run, data, files = base
    run = _copy_run(base_run, tmp_path / "run")
    cfg = _cfg(run)
    t = pq.read_table(files[0])
    dup = str(tmp_path / "dup.parquet")
    pq.write_table(pa.concat_tables([t, t.slice(3, 1)]), dup)
    with pytest.raises(
        InputError, match=rf"dup.parquet, row {t.num_rows}: user '{data['users'][3]}' is also in row 3"
    ):
        import_teacher(run, cfg, "bpr", [dup, *files[1:]])
    cols = str(tmp_path / "cols.parquet")
    pq.write_table(t.rename_columns(["user", "item_ids"]), cols)
    with pytest.raises(InputError, match="cols.parquet: no column 'items'"):
        import_teacher(run, cfg, "bpr", [*files[:3], cols])
    with pytest.raises(InputError, match="nope.parquet: file not found"):
        import_teacher(run, cfg, "bpr", [*files[:3], str(tmp_path / "nope.parquet")])
    with pytest.raises(InputError, match="--states: 3 files for 4 states"):
        import_teacher(run, cfg, "bpr", files[:3])
    assert not os.path.exists(RunLayout(run).teacher("bpr"))


@pytest.mark.parametrize("name", [*builtin_teachers(), "BPR", "../x", "a b", ""])
def test_built_in_and_unsafe_names_are_refused(base, tmp_path, name):
    base_run, _data, files = base
    run = _copy_run(base_run, tmp_path / "run")
    with pytest.raises(InputError, match="--name"):
        import_teacher(run, _cfg(run), name, files)
    assert not os.path.exists(RunLayout(run).teachers)
    assert set(TEACHER_NAMES) <= set(builtin_teachers())


def test_names_must_be_built_in_or_imported_at_stage_time(base, tmp_path):
    from hetcomp_dist.knowledge.rounds import build_round0
    from hetcomp_dist.teachers.actors import train_teachers

    base_run, _data, files = base
    run = _copy_run(base_run, tmp_path / "run")
    cfg = _cfg(run, "teachers.names=[bpr]")  # the config accepts the name ...
    for stage in (train_teachers, build_round0):
        with pytest.raises(InputError, match="'bpr' is not a built-in teacher .* was not imported"):
            stage(run, cfg)  # ... the stages want the teacher
    import_teacher(run, cfg, "bpr", files)
    bigger = dataclasses.replace(cfg, knowledge=dataclasses.replace(cfg.knowledge, topk=K + 1))
    with pytest.raises(InputError, match=f"imported with K = {K} < knowledge.topk = {K + 1}"):
        build_round0(run, bigger)


# -------------------------------------------------------------------------------- command line
def test_cli_import_with_relative_paths(base, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    from hetcomp_dist.cli.main import main

    base_run, data, files = base
    monkeypatch.chdir(tmp_path)
    _copy_run(base_run, tmp_path / "run")
    for e, path in enumerate(files):
        shutil.copy(path, tmp_path / f"e{e + 1}.parquet")
    (tmp_path / "cfg.yaml").write_text(
        f"knowledge:\n  topk: {K}\n  d_k: 20\nteachers:\n  topk: {K}\nbaselines:\n  topk: {K}\n"
    )
    states = "e1.parquet,e2.parquet,e3.parquet,e4.parquet"
    argv = ["teachers", "import", "--run", "run", "--config", "cfg.yaml", "--name", "bpr", "--states", states]
    reverse = {u: items[::-1] for u, items in _read_file(files[3]).items()}
    _write_file(tmp_path / "obs.parquet", reverse)
    assert main([*argv, "--observed", "obs.parquet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["teacher"] == "bpr" and out["K"] == K
    layout = RunLayout(str(tmp_path / "run"))
    assert storage.read_manifest(layout.teacher("bpr"))["sources"]["observed"]["path"] == str(
        tmp_path / "obs.parquet"
    )
    got = _shard_rows(layout.teacher_observed("bpr"))
    assert {data["users"][u]: v for u, v in got.items()} == ref_observed(data, str(tmp_path / "obs.parquet"))
    # training with the imported teacher only: nothing to train, the override in the action's place
    assert main(["teachers", "--run", "run", "--config", "cfg.yaml", "teachers.names=[bpr]"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trained"] == []
    assert main([*argv[:-2], "--states", "e1.parquet", "--teachers", "mf"]) == 2
    assert "--teachers: not an option of `teachers import`" in capsys.readouterr().err
    assert main(["teachers", "imprt", "--run", "run"]) == 2
    assert "unknown action" in capsys.readouterr().err
