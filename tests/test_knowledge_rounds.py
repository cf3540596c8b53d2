"""Knowledge rounds on storage: round 0 and DKC rounds against a plain per-user replay, in-process and
as a Ray Data map, plus idempotence, the switch and bad inputs.

The run is tiny (a few shards of 64 users): `synthesize` writes the data stage and
`hetcomp_dist.testing.trajectories.write_trajectories` the teachers' trajectories in the exact teacher
layout, with few enough items that many users have fewer than K unobserved items (-1 padded lists).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import threading

import numpy as np
import pyarrow as pa
import pytest
from test_knowledge_math import ref_dkc, ref_g

from hetcomp_dist import storage
from hetcomp_dist.config import Config, from_dict
from hetcomp_dist.data.dataset import load_manifest, load_split
from hetcomp_dist.data.synth import synthesize
from hetcomp_dist.errors import InputError
from hetcomp_dist.knowledge import rounds
from hetcomp_dist.knowledge.dkc import DKCParams
from hetcomp_dist.knowledge.rounds import build_round0, dkc_round, load_targets
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.testing.trajectories import perturb_embeddings, write_trajectories

N_USERS, N_ITEMS, SHARD = 230, 110, 64


def _cfg(run: str, **knowledge) -> Config:
    return from_dict(
        Config,
        {
            "run": run,
            "data": {"shard_size": SHARD},
            "synth": {"users": N_USERS, "items": N_ITEMS, "mean_interactions": 12, "max_interactions": 40},
            "knowledge": {"distributed_min_users": 10**9, **knowledge},
        },
    )


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """Data + synthetic trajectories + 7 student embeddings (a base and drifted copies)."""
    run = str(tmp_path_factory.mktemp("kn") / "run")
    cfg = _cfg(run)
    synthesize(run, cfg.synth, cfg.data)
    write_trajectories(run, cfg, seed=3, emb_path=f"{run}/emb0.npz")
    for r in range(1, 7):
        perturb_embeddings(f"{run}/emb0.npz", f"{run}/emb{r}.npz", scale=0.6, seed=r)
    return run


def _fresh(base_run: str, tmp_path, name: str) -> str:
    run = str(tmp_path / name)
    shutil.copytree(base_run, run)
    return run


def _teacher_lists(run: str, cfg: Config) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """All users' (n, M, S, K) state lists and observed orders, read plainly from the teacher files."""
    n, K = N_USERS, cfg.knowledge.topk
    lists = np.full((n, len(cfg.teachers.names), 4, K), -1, dtype=np.int32)
    observed = [[None] * len(cfg.teachers.names) for _ in range(n)]
    for x, name in enumerate(cfg.teachers.names):
        for e in range(4):
            for path in storage.list_files(RunLayout(run).teacher_state(name, e + 1)):
                t = storage.read_table(path).to_pydict()
                for u, items in zip(t["user"], t["items"]):
                    lists[u, x, e, : len(items)] = items
        for path in storage.list_files(RunLayout(run).teacher_observed(name)):
            t = storage.read_table(path).to_pydict()
            for u, items in zip(t["user"], t["items"]):
                observed[u][x] = np.array(items)
    return lists, observed


def _round_files(run: str, r: int):
    """(v, d, targets, pos) of every user, read plainly from the round's shards."""
    v, d, T, P = [], [], [], []
    for path in storage.list_files(RunLayout(run).round(r)):
        t = storage.read_table(path).to_pydict()
        v += t["v"]
        d += t["d"]
        T += t["targets"]
    for path in storage.list_files(RunLayout(run).pos):
        P += storage.read_table(path).to_pydict()["items"]
    return np.array(v), np.array(d, dtype=np.float32), T, P


def _sigma(run: str, cfg: Config, emb: str) -> np.ndarray:
    data = load_manifest(run)
    train = load_split(run, "train", data)
    task = rounds.RoundTask(run, cfg, tuple(cfg.teachers.names), data, 1, 0, emb)
    return rounds.student_topk(task, 0, N_USERS, train)


def test_student_topk_is_brute_force(base_run):
    """The student's top-d_k through FAISS: train items excluded, scores as good as brute force."""
    cfg = _cfg(base_run)
    emb = storage.read_npz(f"{base_run}/emb1.npz")
    sigma = _sigma(base_run, cfg, f"{base_run}/emb1.npz")
    train = load_split(base_run, "train")
    scores = emb["user"] @ emb["item"].T
    for u in range(N_USERS):
        tr = set(train.row(u).tolist())
        got = [i for i in sigma[u] if i >= 0]
        assert not tr & set(got) and len(got) == len(set(got)) == min(cfg.knowledge.d_k, N_ITEMS - len(tr))
        rest = np.array(sorted(set(range(N_ITEMS)) - tr), dtype=np.int64)
        best = np.sort(scores[u, rest])[::-1][: len(got)]
        np.testing.assert_allclose(scores[u, got], best, rtol=1e-5, atol=1e-5)


def test_rounds_match_per_user_replay(base_run, tmp_path):
    """Round 0 and DKC rounds 1..4 equal a plain per-user replay of METHOD.md §3 from the raw files."""
    run = _fresh(base_run, tmp_path, "inproc")
    cfg = _cfg(run)
    kc = cfg.knowledge
    lists, observed = _teacher_lists(run, cfg)
    assert (lists[:, :, :, -1] == -1).any(), (
        "the fixture should have users with fewer than K unobserved items"
    )

    m0 = build_round0(run, cfg)
    assert m0["round"] == 0 and m0["switch"] is False and set(m0["means"].values()) == {0.0}
    v, d, T, P = _round_files(run, 0)
    assert (v == 0).all() and np.isnan(d).all()
    ref_T = [ref_g(lists[u, :, 0], kc.topk) for u in range(N_USERS)]
    for u in range(N_USERS):
        assert T[u] == [i for i in ref_T[u] if i >= 0]
        assert P[u] == [i for i in ref_g([list(o) for o in observed[u]], kc.pos_k) if i >= 0]
        assert len(P[u]) == min(kc.pos_k, len(observed[u][0]))

    ref_v, ref_d = np.zeros((N_USERS, 6), dtype=int), np.full((N_USERS, 6), np.nan)
    params = DKCParams.from_config(kc)
    for r, epoch in ((1, 10), (2, 20), (3, 30), (4, 160)):  # epoch 160: threshold below 1
        emb = f"{run}/emb{r}.npz"
        m = dkc_round(run, cfg, r, epoch, emb)
        sigma = _sigma(run, cfg, emb)
        new_v, new_d = ref_dkc(lists, ref_v, ref_d, sigma, epoch, r == 1, params)
        for u in range(N_USERS):
            if (new_v[u] != ref_v[u]).any():
                ref_T[u] = ref_g([lists[u, x, new_v[u, x]] for x in range(6)], kc.topk)
        ref_v, ref_d = new_v, new_d
        v, d, T, _ = _round_files(run, r)
        np.testing.assert_array_equal(v, ref_v)
        np.testing.assert_allclose(d, ref_d, rtol=0, atol=1e-6)
        for u in range(N_USERS):
            assert T[u] == [i for i in ref_T[u] if i >= 0]
        assert m["means"] == pytest.approx({n: ref_v[:, x].mean() for x, n in enumerate(cfg.teachers.names)})
        assert m["first_call"] == (r == 1) and m["epoch"] == epoch
        if r == 1:
            assert (v == 0).all() and m["changed_users"] == 0
    assert 0 < ref_v.mean() < 3
    got_T, got_P = load_targets(run, 4, 50, 140)  # crosses shard boundaries
    assert got_T.shape == (90, kc.topk) and got_P.shape == (90, kc.pos_k)
    for u in range(50, 140):
        np.testing.assert_array_equal(got_T[u - 50], ref_T[u])


def test_ray_data_round_equals_in_process(base_run, tmp_path, ray_session):
    """The same rounds as a Ray Data map over shard ids (several tasks) give identical files."""
    local, dist = _fresh(base_run, tmp_path, "local"), _fresh(base_run, tmp_path, "dist")
    manifests = {}
    for run, min_users in ((local, 10**9), (dist, 0)):
        cfg = _cfg(run, distributed_min_users=min_users, max_tasks=3)
        out = [build_round0(run, cfg)]
        for r in (1, 2, 3):
            out.append(dkc_round(run, cfg, r, 10 * r, f"{run}/emb{r}.npz"))
        manifests[run] = out
    assert [m["distributed"] for m in manifests[dist]] == [True] * 4
    for a, b in zip(manifests[local], manifests[dist]):
        assert (
            a["means"] == b["means"]
            and a["switch"] == b["switch"]
            and a["changed_users"] == b["changed_users"]
        )
    for r in range(4):
        (va, da, Ta, Pa), (vb, db, Tb, Pb) = _round_files(local, r), _round_files(dist, r)
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(da, db)  # NaN-aware: round 0 has d = NaN
        assert Ta == Tb and Pa == Pb


def test_a_shard_that_always_fails_fails_the_round(base_run, tmp_path, ray_session, monkeypatch):
    """Ray Data retries a task whose worker dies a bounded number of times, then the round fails with
    that error (unbounded, it would retry forever and hang); a task that raises fails with its own error."""
    driver = os.getpid()

    def crash(task, s):  # a shard that kills its worker every time (an OOM kill, a segfault)
        if os.getpid() != driver:  # never the test process itself
            os._exit(1)
        raise AssertionError("the shard ran in the driver")

    def broken(task, s):
        raise ValueError(f"shard {s} is broken")

    for name, fn, expected in (("crash", crash, "died|crashed|exit"), ("raise", broken, "shard 0 is broken")):
        run = _fresh(base_run, tmp_path, name)
        cfg = _cfg(run, distributed_min_users=0, max_tasks=1)
        monkeypatch.setitem(rounds.SHARD_FUNCTIONS, "round0", fn)  # travels to the tasks by value
        outcome: dict = {}

        def build(run=run, cfg=cfg, outcome=outcome):
            try:
                build_round0(run, cfg)
            except Exception as e:  # the round's error, checked below
                outcome["error"] = e

        thread = threading.Thread(target=build, daemon=True)
        thread.start()
        thread.join(timeout=240)
        assert not thread.is_alive(), f"{name}: the round hangs (Ray Data retries the task forever)"
        assert re.search(expected, str(outcome.get("error")), re.I), f"{name}: {outcome.get('error')!r}"
        assert storage.read_manifest(RunLayout(run).round(0)) is None


def test_idempotent_and_chained(base_run, tmp_path):
    run = _fresh(base_run, tmp_path, "idem")
    cfg = _cfg(run)
    build_round0(run, cfg)
    m1 = dkc_round(run, cfg, 1, 10, f"{run}/emb1.npz")
    m2 = dkc_round(run, cfg, 2, 20, f"{run}/emb2.npz")
    shard = storage.shard_path(RunLayout(run).round(2), 0)
    before = storage.read_bytes(shard)
    assert dkc_round(run, cfg, 2, 20, f"{run}/emb2.npz") == m2  # committed: returned as is
    assert (
        build_round0(run, cfg)["config_hash"] == storage.read_manifest(RunLayout(run).round(0))["config_hash"]
    )
    assert storage.read_bytes(shard) == before
    # another student's embeddings for round 2: recomputed (and round 3 of the old one is gone)
    dkc_round(run, cfg, 3, 30, f"{run}/emb3.npz")
    m2b = dkc_round(run, cfg, 2, 20, f"{run}/emb5.npz")
    assert m2b["config_hash"] != m2["config_hash"] and not storage.exists(RunLayout(run).round(3))
    assert dkc_round(run, cfg, 1, 10, f"{run}/emb1.npz") == m1
    # a changed knowledge config invalidates the chain: round 0 rebuilt, later rounds must be redone
    cfg_t = dataclasses.replace(cfg, knowledge=dataclasses.replace(cfg.knowledge, alpha=1.2))
    with pytest.raises(InputError, match="other inputs"):
        dkc_round(run, cfg_t, 2, 20, f"{run}/emb2.npz")
    cfg_T = dataclasses.replace(cfg, knowledge=dataclasses.replace(cfg.knowledge, temperature=5.0))
    build_round0(run, cfg_T)
    with pytest.raises(InputError, match="not committed"):
        dkc_round(run, cfg_T, 2, 20, f"{run}/emb2.npz")


def test_switch_fires_and_stops_dkc(base_run, tmp_path):
    run = _fresh(base_run, tmp_path, "switch")
    cfg = _cfg(run, move_rule="paper", alpha=1e-6)  # paper rule, tiny alpha: every rho > 0 moves
    build_round0(run, cfg)
    means = []
    for r in range(1, 6):
        m = dkc_round(run, cfg, r, 10 * r, f"{run}/emb{r}.npz")
        means.append(m["means"])
        if m["switch"]:
            break
    # round 1 computes d only; then every teacher below 3 moves once per round: 1, 2, 3
    assert [round(x["mf"], 6) for x in means] == [0.0, 1.0, 2.0, 3.0]
    assert m["switch"] and set(m["means"].values()) == {3.0}
    v, _, _, _ = _round_files(run, 4)
    assert (v == 3).all()
    with pytest.raises(InputError, match="switch"):
        dkc_round(run, cfg, 5, 50, f"{run}/emb5.npz")


def test_bad_inputs_fail_before_writing(base_run, tmp_path):
    run = _fresh(base_run, tmp_path, "bad")
    cfg = _cfg(run)
    with pytest.raises(InputError, match="not committed"):
        dkc_round(run, cfg, 1, 10, f"{run}/emb1.npz")  # no round 0 yet
    build_round0(run, cfg)
    storage.write_npz_atomic(
        f"{run}/wrong.npz",
        user=np.zeros((N_USERS - 1, 6), np.float32),
        item=np.zeros((N_ITEMS, 6), np.float32),
    )
    for emb, match in ((f"{run}/wrong.npz", "shape"), (f"{run}/missing.npz", "not found")):
        with pytest.raises(InputError, match=match):
            dkc_round(run, cfg, 1, 10, emb)
        assert not storage.exists(RunLayout(run).round(1))
    with pytest.raises(InputError, match="round"):
        dkc_round(run, cfg, 0, 10, f"{run}/emb1.npz")
    with pytest.raises(InputError, match="metric"):
        dkc_round(run, cfg, 1, 10, f"{run}/emb1.npz", metric="cos")
    other = dataclasses.replace(
        cfg, teachers=dataclasses.replace(cfg.teachers, topk=50)
    )  # teacher hash differs
    with pytest.raises(InputError, match="teacher"):
        build_round0(run, other)


def _put_item(path: str, row: int, item: int) -> None:
    """Rewrites one teacher shard with `item` first in row `row`'s list (the file's schema kept)."""
    t = storage.read_table(path)
    lists = t.column("items").to_pylist()
    lists[row] = [item] + lists[row][1:]
    col = t.schema.get_field_index("items")
    storage.write_table_atomic(
        path, t.set_column(col, t.schema.field(col), pa.array(lists, t.schema.field(col).type))
    )


def test_item_ids_outside_the_catalogue_fail_naming_the_file(base_run, tmp_path):
    """The kernels index a dense table by item id: an id >= n_items in a teacher's files is an
    InputError naming the file, raised before the shard is written; the round is not committed, and
    a rerun after the fix commits it. Round 0 reads every state (it copies them for the DKC rounds);
    without the copies, the DKC round that reads the state fails instead."""
    run = _fresh(base_run, tmp_path, "ids")
    cfg = _cfg(run)
    observed = storage.shard_path(RunLayout(run).teacher_observed("ae"), 1)
    shutil.copy(observed, f"{tmp_path}/observed.parquet")
    _put_item(observed, 3, N_ITEMS)
    with pytest.raises(InputError, match=f"(?s)observed.*item id {N_ITEMS} is outside this run's catalogue"):
        build_round0(run, cfg)
    assert storage.read_manifest(RunLayout(run).round(0)) is None
    assert not storage.exists(storage.shard_path(RunLayout(run).round(0), 1))
    shutil.copy(f"{tmp_path}/observed.parquet", observed)
    state2 = storage.shard_path(RunLayout(run).teacher_state("gnn", 2), 2)
    shutil.copy(state2, f"{tmp_path}/state2.parquet")
    _put_item(state2, 5, N_ITEMS + 7)
    with pytest.raises(InputError, match=f"(?s)gnn/state=2.*item id {N_ITEMS + 7}"):
        build_round0(run, cfg)
    assert storage.read_manifest(RunLayout(run).round(0)) is None
    assert not storage.exists(storage.shard_path(RunLayout(run).round(0), 2))

    nocache = dataclasses.replace(cfg, knowledge=dataclasses.replace(cfg.knowledge, cache_states=False))
    assert build_round0(run, nocache)["state_cache"] is False
    assert not storage.exists(RunLayout(run).state_caches)
    with pytest.raises(
        InputError, match=f"(?s)gnn/state=2.*item id {N_ITEMS + 7}"
    ):  # round 1 reads E2 (v = 0)
        dkc_round(run, nocache, 1, 10, f"{run}/emb1.npz")
    assert storage.read_manifest(RunLayout(run).round(1)) is None
    assert not storage.exists(storage.shard_path(RunLayout(run).round(1), 2))
    shutil.copy(f"{tmp_path}/state2.parquet", state2)
    dkc_round(run, nocache, 1, 10, f"{run}/emb1.npz")


def test_state_copies_equal_the_teacher_files_and_are_checked(base_run, tmp_path):
    """Round 0's copies of the states hold the teachers' lists exactly (-1 padded), the DKC rounds read
    them and equal the rounds read from the Parquet files; a missing or bad copy fails naming it."""
    from hetcomp_dist.knowledge import shard_io

    cached, plain = _fresh(base_run, tmp_path, "cached"), _fresh(base_run, tmp_path, "plain")
    cfg, cfg_plain = _cfg(cached), _cfg(plain, cache_states=False)
    lists, _ = _teacher_lists(cached, cfg)
    K = cfg.knowledge.topk
    assert build_round0(cached, cfg)["state_cache"] is True
    build_round0(plain, cfg_plain)
    for x, name in enumerate(cfg.teachers.names):
        for e in range(1, 5):
            for s in range(storage.n_shards(N_USERS, SHARD)):
                lo, hi = storage.shard_range(s, SHARD, N_USERS)
                got = shard_io.read_state_cache(
                    storage.shard_path(RunLayout(cached).state_cache(name, e), s, ".arrow"),
                    lo,
                    hi,
                    np.empty((hi - lo, K), np.int32),
                    N_ITEMS,
                )
                np.testing.assert_array_equal(got, lists[lo:hi, x, e - 1])
    for r in (1, 2, 3):
        dkc_round(cached, cfg, r, 10 * r, f"{cached}/emb{r}.npz")
        dkc_round(plain, cfg_plain, r, 10 * r, f"{plain}/emb{r}.npz")
        (va, da, Ta, _), (vb, db, Tb, _) = _round_files(cached, r), _round_files(plain, r)
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(da, db)
        assert Ta == Tb

    copy = storage.shard_path(RunLayout(cached).state_cache("dnn", 3), 1, ".arrow")
    lo, hi = storage.shard_range(1, SHARD, N_USERS)
    bad = lists[lo:hi, 2, 2].copy()
    bad[4, 0] = N_ITEMS + 2
    good = storage.read_bytes(copy)
    for broken, match in (
        (
            lambda: storage.write_bytes_atomic(copy, good[: len(good) // 2]),
            "not a readable Arrow IPC.*rebuild round 0",
        ),
        (lambda: _put_copy(copy, lo, hi, bad), f"item id {N_ITEMS + 2}"),
        (
            lambda: shard_io.write_state_cache(copy, lo + 1, hi + 1, lists[lo:hi, 2, 2], N_ITEMS),
            "expected users",
        ),
        (lambda: storage.write_bytes_atomic(copy, b""), "not a readable"),
        (lambda: os.remove(copy), "missing.*rebuild round 0"),
    ):
        broken()
        with pytest.raises(InputError, match=f"(?s)states/dnn/state=3/shard-00001.arrow.*{match}"):
            dkc_round(cached, cfg, 4, 160, f"{cached}/emb4.npz")  # v <= 2 here: E3 is read
        assert storage.read_manifest(RunLayout(cached).round(4)) is None
        storage.write_bytes_atomic(copy, good)
    dkc_round(cached, cfg, 4, 160, f"{cached}/emb4.npz")


def _put_copy(path: str, lo: int, hi: int, lists: np.ndarray) -> None:
    """A state copy in the int32 layout holding `lists` as they are (write_state_cache refuses bad ids)."""
    storage.write_ipc_atomic(
        path,
        pa.table(
            {
                "user": pa.array(np.arange(lo, hi, dtype=np.int32)),
                "items": pa.FixedSizeListArray.from_arrays(pa.array(lists.ravel()), lists.shape[1]),
            }
        ),
    )


@pytest.mark.parametrize("n_items", [70, 70_000])  # item + 1 as uint16, and int32 past NARROW_MAX_ITEMS
def test_state_copy_round_trip(tmp_path, n_items):
    from hetcomp_dist.knowledge import shard_io

    rng = np.random.default_rng(n_items)
    lists = np.full((37, 12), -1, dtype=np.int32)
    for i in range(37):
        m = int(rng.integers(0, 13))  # empty lists, short ones and full ones
        lists[i, :m] = rng.choice(n_items, m, replace=False)
    lists[5, :12] = np.arange(n_items - 12, n_items)  # the largest ids
    path = f"{tmp_path}/s.arrow"
    shard_io.write_state_cache(path, 100, 137, lists, n_items)
    typ = storage.read_ipc(path).schema.field("items").type
    assert typ.value_type == (pa.uint16() if n_items <= shard_io.NARROW_MAX_ITEMS else pa.int32())
    np.testing.assert_array_equal(
        shard_io.read_state_cache(path, 100, 137, np.empty((37, 12), np.int32), n_items), lists
    )
    with pytest.raises(InputError, match="fixed_size_list"):
        shard_io.read_state_cache(path, 100, 137, np.empty((37, 11), np.int32), n_items)
    with pytest.raises(InputError, match=f"item id {n_items - 1} is outside"):
        shard_io.read_state_cache(path, 100, 137, np.empty((37, 12), np.int32), n_items - 1)
    for wrong in (n_items, -2):  # the writer refuses ids it could not store
        bad = lists.copy()
        bad[3, 0] = wrong
        with pytest.raises(ValueError, match="ids in"):
            shard_io.write_state_cache(f"{tmp_path}/t.arrow", 100, 137, bad, n_items)
    assert not os.path.exists(f"{tmp_path}/t.arrow")


def test_cli(base_run, tmp_path, capsys):
    import json

    from hetcomp_dist.cli.main import main

    run = _fresh(base_run, tmp_path, "cli")
    assert main(["knowledge", "--run", run]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["round"] == 0
    assert main(["knowledge", "--run", run, "--round", "1"]) == 2  # a DKC round needs --emb and --epoch
    assert main(["knowledge", "--run", run, "--round", "1", "--epoch", "10", "--emb", f"{run}/emb1.npz"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["round"] == 1 and out["epoch"] == 10 and out["switch"] is False and len(out["means"]) == 6


def _round_arrays(folder: str):
    """(v, d, targets) of every user of one round folder, read plainly."""
    v, d, T = [], [], []
    for path in storage.list_files(folder):
        t = storage.read_table(path).to_pydict()
        v, d, T = v + t["v"], d + t["d"], T + t["targets"]
    return np.array(v), np.array(d, dtype=np.float32), T


def test_students_keep_their_own_rounds(base_run, tmp_path):
    """Two students on one run, their DKC rounds interleaved: each student's rounds (in its own folder)
    equal those of the same student alone on a copy of the run; round 0 is shared and left as it was."""
    run = _fresh(base_run, tmp_path, "two")
    cfg = _cfg(run)
    build_round0(run, cfg)
    layout = RunLayout(run)
    r0 = storage.read_bytes(storage.shard_path(layout.round(0), 0))
    embs = {"a": (1, 2, 3), "b": (4, 5, 6)}
    folders = {s: layout.student_rounds(layout.student(s, "mf")) for s in embs}
    for r in (1, 2, 3):
        for s, e in embs.items():
            m = dkc_round(run, cfg, r, 10 * r, f"{run}/emb{e[r - 1]}.npz", rounds=folders[s])
            assert storage.read_manifest(layout.round(r, folders[s])) == m
    assert storage.read_bytes(storage.shard_path(layout.round(0), 0)) == r0
    assert not storage.exists(layout.round(1))
    for s, e in embs.items():
        solo = _fresh(base_run, tmp_path, f"solo-{s}")
        build_round0(solo, _cfg(solo))
        for r in (1, 2, 3):
            dkc_round(solo, _cfg(solo), r, 10 * r, f"{solo}/emb{e[r - 1]}.npz")
            got, want = _round_arrays(layout.round(r, folders[s])), _round_arrays(RunLayout(solo).round(r))
            assert np.array_equal(got[0], want[0]) and got[2] == want[2]
            assert np.array_equal(got[1], want[1], equal_nan=True)
        targets, _ = rounds.load_targets(run, 3, 0, N_USERS, folders[s])
        assert [list(t[t >= 0]) for t in targets] == [
            list(t) for t in _round_arrays(layout.round(3, folders[s]))[2]
        ]
    a3, b3 = _round_arrays(layout.round(3, folders["a"])), _round_arrays(layout.round(3, folders["b"]))
    assert a3[2] != b3[2], "the two students should have built different targets"
