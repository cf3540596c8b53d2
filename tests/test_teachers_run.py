"""Teachers end to end on tiny synthetic runs: Ray actors, the trajectory's properties, exact
agreement with brute-force rankings and metrics, resume after a killed actor, bad input."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import (
    BaselinesConfig,
    Config,
    EvalConfig,
    KnowledgeConfig,
    TeachersConfig,
    TeacherTraining,
)
from hetcomp_dist.data.dataset import load_manifest, load_split
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.registry import model_class
from hetcomp_dist.teachers.runner import run_teacher
from hetcomp_dist.teachers.trajectory import choose_states, load_weights, recall_vs_exact

K = 20


# ------------------------------------------------------------------------------------- helpers
def copy_run(synth_run: str, dest) -> str:
    """A private RUN with the session's synthetic data (teachers are written next to it, not into
    the shared fixture)."""
    run = str(dest)
    shutil.copytree(RunLayout(synth_run).data, RunLayout(run).data)
    return run


def tiny_config(run: str, names=("mf", "ml", "dnn", "gnn", "ae", "iae"), **teachers) -> Config:
    fast = TeacherTraining(lr=0.01)
    t = TeachersConfig(
        names=tuple(names),
        dim=16,
        topk=K,
        max_epochs=12,
        eval_every=4,
        snapshot_every=2,
        patience=2,
        batch_size=256,
        ae_hidden=32,
        dnn_mlp_dim=8,
        ae_anneal_steps=20,
        num_cpus=0.25,
        progress_every_s=2.0,
        mf=fast,
        ml=fast,
        dnn=fast,
        gnn=fast,
        ae=TeacherTraining(lr=0.01, batch_size=64),
        iae=TeacherTraining(lr=0.01, batch_size=64),
    )
    t = dataclasses.replace(t, **teachers)
    knowledge = KnowledgeConfig(topk=t.topk, d_k=min(KnowledgeConfig().d_k, t.topk))  # reads the lists whole
    return Config(
        run=run, teachers=t, eval=EvalConfig(batch_size=100), knowledge=knowledge,
        baselines=BaselinesConfig(topk=t.topk, cldrd_stages=((5, 5, 5),)),
    )  # fmt: skip


# ---------------------------------------------------------------------------- independent checks
def brute_force_topk(scores: np.ndarray, exclude: list[set], k: int) -> list[list[int]]:
    """Per-user loop: items by score descending (ties: smaller id), skipping the excluded."""
    out = []
    for u, row in enumerate(scores):
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))
        out.append([i for i in order if i not in exclude[u]][:k])
    return out


def brute_force_metrics(top: list[list[int]], gt: list[set], ks=(10, 50)) -> dict:
    res = {f"{m}@{k}": [] for k in ks for m in ("R", "N")}
    for t, g in zip(top, gt):
        if not g:
            continue
        for k in ks:
            hits = [1.0 if i in g else 0.0 for i in t[:k]]
            res[f"R@{k}"].append(sum(hits) / len(g))
            dcg = sum(h / np.log2(p + 2) for p, h in enumerate(hits))
            res[f"N@{k}"].append(dcg / sum(1 / np.log2(p + 2) for p in range(min(len(g), k))))
    return {key: float(np.mean(v)) for key, v in res.items()}


def user_lists(run: str, split: str) -> list[set]:
    c = load_split(run, split)
    return [set(c.row(u).tolist()) for u in range(c.n)]


def read_lists(folder: str, n_users: int, shard_size: int) -> list[list[int]]:
    """Every user's list of a teacher's folder (a `RunLayout.teacher_state` or `teacher_observed`)."""
    out = []
    for s, lo, hi in storage.iter_shards("", n_users, shard_size):
        t = storage.read_table(storage.shard_path(folder, s))
        assert t.column("user").to_pylist() == list(range(lo, hi)), (
            "shard rows must be exactly its user range"
        )
        out.extend(t.column("items").to_pylist())
    return out


def check_trajectory(run: str, name: str) -> dict:
    """The issue's properties: 4 states ordered by epoch, K items per user, no train item, observed
    lists = the train lists reordered, metrics for every state."""
    data = load_manifest(run)
    n, S = data["n_users"], data["shard_size"]
    layout = RunLayout(run)
    man = storage.read_manifest(layout.teacher(name))
    metrics = storage.read_json(layout.teacher_metrics(name))
    train = user_lists(run, "train")
    epochs = man["state_epochs"]
    assert len(epochs) == 4 and epochs == sorted(epochs) and epochs[-1] == man["convergence_epoch"]
    assert epochs == choose_states(metrics["state_epochs"], man["convergence_epoch"])
    assert [s["state"] for s in metrics["states"]] == [1, 2, 3, 4]
    # the phases' CPU seconds: each its own, together within the process's
    assert 0 < metrics["train_cpu_s"] and 0 < metrics["export_cpu_s"]
    assert metrics["train_cpu_s"] + metrics["export_cpu_s"] <= metrics["cpu_s"]
    for i in range(1, 5):
        lists = read_lists(layout.teacher_state(name, i), n, S)
        for u, row in enumerate(lists):
            assert len(row) == min(K, data["n_items"] - len(train[u])), (name, i, u)
            assert len(set(row)) == len(row)
            assert not set(row) & train[u], f"{name} state {i}: train item in user {u}'s list"
        assert set(metrics["states"][i - 1]) >= {"valid", "test", "epoch"}
        assert set(metrics["states"][i - 1]["test"]) >= {"R@10", "N@10", "R@50", "N@50"}
    observed = read_lists(layout.teacher_observed(name), n, S)
    assert [sorted(o) for o in observed] == [sorted(t) for t in train]
    return man


# -------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, ray_session, synth_run):
    from hetcomp_dist.teachers.actors import train_teachers

    run = copy_run(synth_run, tmp_path_factory.mktemp("teachers") / "run")
    cfg = tiny_config(run)
    summary = train_teachers(run, cfg)
    return run, cfg, summary


def test_all_six_trajectories_valid(trained_run):
    run, cfg, summary = trained_run
    assert sorted(summary["teachers"]) == sorted(cfg.teachers.names)
    assert sorted(summary["trained"]) == sorted(cfg.teachers.names)
    for name in cfg.teachers.names:
        check_trajectory(run, name)
    stage = storage.read_manifest(RunLayout(run).teachers)
    assert stage["names"] == list(cfg.teachers.names)


@pytest.mark.parametrize("name", ["mf", "ae"])  # one FAISS path, one score-block path
def test_export_and_metrics_equal_brute_force(trained_run, name):
    run, cfg, _ = trained_run
    data = load_manifest(run)
    layout = RunLayout(run)
    man = storage.read_manifest(layout.teacher(name))
    metrics = storage.read_json(layout.teacher_metrics(name))
    train, valid, test = (user_lists(run, s) for s in ("train", "valid", "test"))
    train_csr = load_split(run, "train")
    model = model_class(name, cfg.teachers)(data["n_users"], data["n_items"], cfg.teachers, train_csr)
    e4 = storage.join(layout.teacher(name), man["snapshots"]["state=4"])  # as the manifest records it
    assert e4 == layout.teacher_snapshot(name, man["state_epochs"][-1])
    model.load_state_dict(load_weights(e4))
    with torch.no_grad():
        scores = model.eval().scores(torch.arange(data["n_users"]), train_csr).numpy()
    exported = read_lists(layout.teacher_state(name, 4), data["n_users"], data["shard_size"])
    ref = brute_force_topk(scores, train, K)
    for u in range(data["n_users"]):  # equal up to float near-ties
        got = scores[u, exported[u]]
        want = scores[u, ref[u]]
        np.testing.assert_allclose(got, want, atol=1e-5)
    for split, other in (("valid", test), ("test", valid)):
        gt = valid if split == "valid" else test
        top = brute_force_topk(scores, [a | b for a, b in zip(train, other)], 50)
        want = brute_force_metrics(top, gt)
        got = metrics["states"][3][split]
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6), (name, split, key)
    observed = read_lists(layout.teacher_observed(name), data["n_users"], data["shard_size"])
    for u in range(data["n_users"]):
        s = scores[u, observed[u]]
        assert np.all(np.diff(s) <= 1e-6)


def test_rerun_skips_committed(trained_run, monkeypatch):
    from hetcomp_dist.teachers import actors
    from hetcomp_dist.teachers.actors import train_teachers

    run, cfg, first = trained_run
    started = []
    monkeypatch.setattr(actors, "start_teachers", lambda run, cfg, names: started.append(names))
    summary = train_teachers(run, cfg)
    assert summary["trained"] == [] and started == []  # no actor started: manifests only
    assert summary["teachers"] == first["teachers"]


def test_killed_actor_resumes_from_snapshot(tmp_path, ray_session, synth_run):
    from hetcomp_dist.teachers.actors import start_teachers

    run = copy_run(synth_run, tmp_path / "run")
    cfg = tiny_config(run, names=("mf",), max_epochs=20, patience=100, batch_size=32)
    group = start_teachers(run, cfg, ["mf"])
    deadline = time.time() + 120
    status = {}
    while time.time() < deadline:  # wait for a checkpoint, then kill the actor's process
        status = group.status().get("mf", {})
        if status.get("epoch", 0) >= 4 and not status.get("done"):
            break
        time.sleep(0.1)
    assert 4 <= status.get("epoch", 0) < 20, f"could not catch the actor mid-training: {status}"
    os.kill(status["pid"], signal.SIGKILL)
    group.wait()
    metrics = storage.read_json(RunLayout(run).teacher_metrics("mf"))
    assert len(metrics["resumed_from"]) == 1 and metrics["resumed_from"][0] >= 2
    assert metrics["resumed_from"][0] % cfg.teachers.snapshot_every == 0
    assert metrics["epochs"] == 20
    check_trajectory(run, "mf")
    # resuming is exact: an uninterrupted in-process run of the same config exports the same lists
    ref_run = str(tmp_path / "ref")
    shutil.copytree(RunLayout(run).data, RunLayout(ref_run).data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_teacher(ref_run, dataclasses.replace(cfg, run=ref_run), "mf")
    finally:
        torch.set_num_threads(threads)
    data = load_manifest(run)
    for i in range(1, 5):
        a = read_lists(RunLayout(run).teacher_state("mf", i), data["n_users"], data["shard_size"])
        b = read_lists(RunLayout(ref_run).teacher_state("mf", i), data["n_users"], data["shard_size"])
        assert a == b, f"state {i} differs after resume"


def test_progress_board_restarts_and_a_lost_board_is_not_fatal(tmp_path, ray_session, synth_run):
    import ray

    from hetcomp_dist.teachers.actors import start_teachers

    run = copy_run(synth_run, tmp_path / "run")
    cfg = tiny_config(run, names=("mf",), max_epochs=20, patience=100, batch_size=32)
    group = start_teachers(run, cfg, ["mf"])

    def wait_for_epoch(epoch: int) -> dict:
        deadline = time.time() + 120
        while time.time() < deadline:
            status = group.status().get("mf", {})
            if status.get("epoch", 0) >= epoch:
                return status
            time.sleep(0.1)
        raise AssertionError(f"no progress: {group.status()}")

    first = wait_for_epoch(1)
    ray.kill(group.board, no_restart=False)  # a crash: the board comes back and the teacher reports again
    assert wait_for_epoch(first["epoch"] + 1)["pid"] == first["pid"]
    ray.kill(group.board)  # gone for good: only the progress lines are lost
    # ray.kill is asynchronous: a snapshot sent just after it may still be served. Once the board is gone,
    # status() is {} and stays so, and the teachers go on.
    deadline = time.time() + 60
    while group.status() != {} and time.time() < deadline:
        time.sleep(0.1)
    assert group.status() == {} and group.board_lost
    results = group.wait()
    assert results["mf"]["config_hash"] == storage.read_manifest(RunLayout(run).teacher("mf"))["config_hash"]
    check_trajectory(run, "mf")


def test_unreadable_checkpoint_restarts_the_teacher_from_scratch(tmp_path, synth_run, capsys):
    """A torn or overwritten checkpoint is a cache miss: reported, then the teacher trains from scratch
    and exports exactly what an untouched run exports."""
    from hetcomp_dist.teachers.fit import load_checkpoint

    runs = {name: copy_run(synth_run, tmp_path / name) for name in ("corrupt", "clean")}
    layout = RunLayout(runs["corrupt"])
    real = io.BytesIO()
    torch.save({"state": "{}", "model": {"w": torch.zeros(64)}}, real)
    damaged = {
        "random": np.random.default_rng(0).bytes(4096),
        "torn": real.getvalue()[: len(real.getvalue()) // 2],
        "stop opcode": b".",  # torch's weights-only unpickler raises IndexError here
        "text": b"not a checkpoint",
    }
    storage.begin_stage(layout.teacher("mf"))  # the folder as an earlier training of mf created it
    for what, blob in damaged.items():
        storage.write_bytes_atomic(layout.teacher_checkpoint("mf"), blob)
        assert load_checkpoint(layout.teacher_checkpoint("mf"), "any") is None, what
    storage.write_bytes_atomic(layout.teacher_snapshot("mf", 2), b"stale")  # a crash's leftovers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for run in runs.values():
            run_teacher(run, tiny_config(run, names=("mf",)), "mf")
    finally:
        torch.set_num_threads(threads)
    assert f"checkpoint {layout.teacher_checkpoint('mf')} is unreadable" in capsys.readouterr().err
    assert storage.read_json(layout.teacher_metrics("mf"))["resumed_from"] == []
    data = load_manifest(runs["corrupt"])
    for i in range(1, 5):
        a, b = (
            read_lists(RunLayout(r).teacher_state("mf", i), data["n_users"], data["shard_size"])
            for r in runs.values()
        )
        assert a == b, f"state {i} differs from an untouched run"


def test_bad_input_fails_before_anything_starts(tmp_path, capsys, synth_run):
    from hetcomp_dist.cli.main import main

    empty = str(tmp_path / "empty")
    assert main(["teachers", "--run", empty]) == 2
    assert "no finished data stage" in capsys.readouterr().err
    assert not os.path.exists(RunLayout(empty).teachers)
    run = copy_run(synth_run, tmp_path / "run")
    assert main(["teachers", "--run", run, "--teachers", "mf,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("teachers:\n  dim: sixty-four\n")
    assert main(["teachers", "--run", run, "--config", str(bad)]) == 2
    assert "teachers.dim" in capsys.readouterr().err
    bad.write_text("teachers:\n  learning_rate: 0.1\n")
    assert main(["teachers", "--run", run, "--config", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert not os.path.exists(RunLayout(run).teachers)


def test_choose_states_and_pruning():
    from hetcomp_dist.teachers.trajectory import prunable_snapshots

    assert choose_states([10, 20, 30, 40], 40) == [10, 20, 30, 40]
    assert choose_states([5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60], 60) == [15, 30, 45, 60]
    # 0.25 * 60 = 15 is equidistant from 10 and 20: the later one
    assert choose_states([10, 20, 30, 40, 50, 60, 70], 60) == [20, 30, 50, 60]
    assert choose_states([10], 10) == [10, 10, 10, 10]
    with pytest.raises(ValueError):
        choose_states([10, 20], 30)
    # pruned snapshots are never chosen for any later best epoch
    snaps = list(range(2, 41, 2))
    for best in range(2, 41, 2):
        pruned = prunable_snapshots(snaps, best)
        for later in range(best, 41, 2):
            assert not set(pruned) & set(choose_states(snaps, later))


def test_per_teacher_overrides_resolve_and_validate():
    from hetcomp_dist.config import load_config
    from hetcomp_dist.teachers.fit import resolve

    cfg = load_config(
        None,
        ["teachers.lr=0.002", "teachers.gnn.lr=0.01", "teachers.gnn.l2=0.0001", "teachers.ae.eval_every=20"],
    )
    gnn, gnn_model_cfg = resolve(cfg.teachers, "gnn")
    mf, mf_model_cfg = resolve(cfg.teachers, "mf")
    assert (gnn.lr, gnn_model_cfg.l2) == (0.01, 0.0001)
    assert (mf.lr, mf_model_cfg.l2, mf.eval_every) == (0.002, cfg.teachers.l2, 10)
    assert resolve(cfg.teachers, "ae")[0].eval_every == 20
    with pytest.raises(InputError, match="snapshot_every"):
        load_config(None, ["teachers.ml.eval_every=15"])  # no snapshot at an evaluated epoch
    with pytest.raises(InputError, match="unknown key"):
        load_config(None, ["teachers.mf.momentum=0.9"])


def popularity_valid(run: str, k: int = 50) -> dict:
    """Valid metrics of ranking every user's unobserved items by train popularity (ties: smaller id)."""
    data = load_manifest(run)
    train, valid, test = (user_lists(run, s) for s in ("train", "valid", "test"))
    pop = np.bincount(load_split(run, "train").items, minlength=data["n_items"]).astype(float)
    top = brute_force_topk(np.tile(pop, (data["n_users"], 1)), [a | b for a, b in zip(train, test)], k)
    return brute_force_metrics(top, valid)


@pytest.mark.parametrize("name", ["als", "iknn", "rp3"])
def test_self_fitted_teacher_in_process(tmp_path, synth_run, name):
    """A teacher with its own solver runs the same stage in-process: E1..E4, exports, metrics, a valid
    R@50 above item popularity's; an export redone from its checkpoint (no optimiser state) is the same."""
    run = copy_run(synth_run, tmp_path / "run")
    cfg = tiny_config(run, names=(name,))
    layout = RunLayout(run)
    man = run_teacher(run, cfg, name)
    check_trajectory(run, name)
    metrics = storage.read_json(layout.teacher_metrics(name))
    assert metrics["stop"] in ("early", "max_epochs") and metrics["epochs"] >= man["convergence_epoch"]
    assert all(np.isfinite(h["loss"]) for h in metrics["history"])
    assert man["valid"]["R@50"] > popularity_valid(run)["R@50"] + 0.02, (man["valid"], popularity_valid(run))
    data = load_manifest(run)
    before = read_lists(layout.teacher_state(name, 4), data["n_users"], data["shard_size"])
    os.remove(storage.manifest_path(layout.teacher(name)))  # as if the actor died while exporting
    again = run_teacher(run, cfg, name)
    assert again["state_epochs"] == man["state_epochs"] and again["test"] == man["test"]
    assert read_lists(layout.teacher_state(name, 4), data["n_users"], data["shard_size"]) == before


def test_family_fields_change_only_their_teacher():
    """Setting the ALS fields retrains ALS, never a teacher that does not read them; an override of one
    key of a family's section keeps the section's other defaults."""
    from hetcomp_dist.config import load_config
    from hetcomp_dist.teachers.fit import resolve
    from hetcomp_dist.teachers.runner import teacher_hash

    base = load_config(None, [])
    other = load_config(None, ["teachers.als_alpha=5", "teachers.als_reg=0.1", "teachers.als.max_epochs=30"])
    for name in base.teachers.names:
        assert teacher_hash(base, name, "data") == teacher_hash(other, name, "data"), name
    assert teacher_hash(base, "als", "data") != teacher_hash(other, "als", "data")
    als, _ = resolve(other.teachers, "als")
    assert (als.max_epochs, als.eval_every, als.snapshot_every) == (30, 1, 1)
    assert load_config(None, ["teachers.names=[mf, als]"]).teachers.names == ("mf", "als")
    assert base.teachers.names == ("mf", "ml", "dnn", "gnn", "ae", "iae")  # the paper's six by default
    with pytest.raises(InputError, match="als_alpha"):
        load_config(None, ["teachers.als_alpha=0"])
    for key in ("iknn_k=10", "iknn_shrink=0"):
        other = load_config(None, [f"teachers.{key}"])
        assert teacher_hash(base, "iknn", "data") != teacher_hash(other, "iknn", "data"), key
        assert teacher_hash(base, "rp3", "data") == teacher_hash(other, "rp3", "data"), key
    with pytest.raises(InputError, match="iknn.max_epochs"):
        load_config(None, ["teachers.iknn.max_epochs=3"])
    rp3 = load_config(None, ["teachers.rp3_k=10", "teachers.rp3_alpha=1", "teachers.rp3_beta=0"])
    for name in ("iknn", *base.teachers.names):
        assert teacher_hash(base, name, "data") == teacher_hash(rp3, name, "data"), name
    for key in ("rp3_k=10", "rp3_alpha=1", "rp3_beta=0"):
        other = load_config(None, [f"teachers.{key}"])
        assert teacher_hash(base, "rp3", "data") != teacher_hash(other, "rp3", "data"), key
    with pytest.raises(InputError, match="rp3.max_epochs"):
        load_config(None, ["teachers.rp3.max_epochs=3"])
    with pytest.raises(InputError, match="rp3_alpha"):
        load_config(None, ["teachers.rp3_alpha=0"])
    blocked = load_config(None, ["teachers.iae_softmax_block=64"])  # the item-AE's blocked normaliser
    for name in base.teachers.names:
        assert (teacher_hash(base, name, "data") == teacher_hash(blocked, name, "data")) == (name != "iae")
    ranked = load_config(None, ["teachers.iae_score=log_softmax"])  # the item-AE's normalised ranking
    for name in base.teachers.names:
        assert (teacher_hash(base, name, "data") == teacher_hash(ranked, name, "data")) == (name != "iae")
    with pytest.raises(InputError, match="iae_score"):
        load_config(None, ["teachers.iae_score=softmax"])
    for family in ("ae", "iae"):  # the autoencoders' sampled normalisers: each in its own hash only
        sampled = load_config(None, [f"teachers.{family}_decoder_samples=64"])
        for name in base.teachers.names:
            same = teacher_hash(base, name, "data") == teacher_hash(sampled, name, "data")
            assert same == (name != family), (family, name)
    # at 0 (the full softmax) the fields stay out of the hash: autoencoders a run trained before they existed
    # are not retrained. The values are the hashes b31d597 (the commit before them) gave the default config;
    # a change that means to retrain every teacher updates them
    assert (teacher_hash(base, "ae", "data"), teacher_hash(base, "iae", "data")) == (
        "5e8f04c612cbe65c",
        "80c4c2b7c9d47d63",
    )


def test_torch_threads_are_part_of_a_teachers_hash(tmp_path, synth_run):
    """Two torch threads sum in another order than one and change the exports, so a teacher's hash holds
    its thread count (one per whole CPU of its actor), and run_teacher trains with that count in-process
    too, then gives the caller its own back."""
    from hetcomp_dist.config import load_config
    from hetcomp_dist.teachers.runner import teacher_hash, teacher_threads

    cfgs = {n: load_config(None, [f"teachers.num_cpus={n}"]) for n in ("0.3", "0.9", "2")}
    assert [teacher_threads(c) for c in cfgs.values()] == [1, 1, 2]
    for name in ("mf", "gnn", "ae"):
        assert teacher_hash(cfgs["0.3"], name, "d") == teacher_hash(cfgs["0.9"], name, "d")
        assert teacher_hash(cfgs["0.3"], name, "d") != teacher_hash(cfgs["2"], name, "d")
    run = copy_run(synth_run, tmp_path / "run")
    seen = []
    real = torch.set_num_threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        cfg = tiny_config(run, names=("mf",), num_cpus=2.0)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n))[1])
            man = run_teacher(run, cfg, "mf")
        assert seen == [2, 3] and torch.get_num_threads() == 3
        assert man["environment"]["threads"]["torch"] == 2
    finally:
        real(threads)


def ivf_config(run: str, name: str, **teachers) -> Config:
    """`tiny_config` for teacher `name` (4 epochs, a snapshot each) exporting through an IVF of 7 lists,
    2 probed at first, NeuMF through 40 candidates, recall measured on 150 users; `teachers` overrides."""
    base = tiny_config(run, names=(name,), max_epochs=4, eval_every=4, snapshot_every=1)
    return dataclasses.replace(
        base,
        teachers=dataclasses.replace(
            base.teachers, export_index="ivf", export_candidates=40, export_recall_users=150, **teachers
        ),
        eval=dataclasses.replace(base.eval, ivf_nlist=8, ivf_nprobe=2),
    )


# an embedding model; a candidate-then-rescore model; a model whose candidate vectors are its scores
@pytest.mark.parametrize("name", ["mf", "dnn", "ae"])
def test_approximate_export_measures_its_recall(tmp_path, synth_run, name):
    """teachers.export_index=ivf (2 of 7 lists probed at first, then sized per state for recall .99;
    NeuMF through 40 candidates, Mult-VAE by the index over its exact vectors): a valid trajectory, each
    state's recall@K against exact and the search it exported with in metrics.json, metrics that are the
    approximate ranker's own at that search, and a teacher hash of its own (the calibration's settings in
    it only when it runs)."""
    from hetcomp_dist.evaluation.evaluate import evaluate_topk
    from hetcomp_dist.teachers.runner import export_candidates, export_eval, teacher_hash
    from hetcomp_dist.teachers.trajectory import Ranker

    run = copy_run(synth_run, tmp_path / "run")
    exact = tiny_config(run, names=(name,), max_epochs=4, eval_every=4, snapshot_every=1)
    # the IVF as calibrated, however wide (the exact switch: the test below)
    approx = ivf_config(run, name, export_recall_target=0.99, export_exact_share=0.0)
    data = load_manifest(run)

    def hash_of(cfg, **teachers) -> str:
        return teacher_hash(
            dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, **teachers)),
            name,
            data["config_hash"],
        )

    assert hash_of(approx) != hash_of(exact)
    assert hash_of(approx, export_recall_target=0.9) != hash_of(approx)
    assert hash_of(approx, export_recall_users=100) != hash_of(approx)  # the calibration sample
    plain = dict(export_recall_target=0.0)
    assert hash_of(approx, **plain, export_recall_users=100) == hash_of(approx, **plain)
    assert hash_of(exact, export_recall_target=0.9, export_recall_users=100) == hash_of(exact)
    assert hash_of(approx, export_exact_share=0.5) != hash_of(approx)  # it can change the lists
    calibrated, flat = hash_of(approx), hash_of(exact)
    with pytest.MonkeyPatch.context() as mp:  # the calibration's margin sizes the search: in the hash
        mp.setattr("hetcomp_dist.teachers.runner.RECALL_Z", 3.0)
        assert hash_of(approx) != calibrated and hash_of(exact) == flat
    # read by the calibration only
    assert hash_of(approx, **plain, export_exact_share=0.5) == hash_of(approx, **plain)
    assert hash_of(exact, export_exact_share=0.5) == hash_of(exact)
    man = run_teacher(run, approx, name)
    check_trajectory(run, name)
    metrics = storage.read_json(RunLayout(run).teacher_metrics(name))
    for st in metrics["states"]:
        ex = st["export"]
        assert 0 < ex["recall_vs_exact"] <= 1 and ex["recall_users"] == 150
        nprobe = ex["search_breadth"]["nprobe"]
        assert ex["search_breadth"]["nlist"] == 7
        assert nprobe in (2, 4, 7) and ex["calibration_steps"] == (2, 4, 7).index(nprobe)
        assert ex["calibration_recall"] >= 0.99 or nprobe == 7
    train = load_split(run, "train")
    model = model_class(name, approx.teachers)(data["n_users"], data["n_items"], approx.teachers, train)
    model.load_state_dict(load_weights(RunLayout(run).teacher_snapshot(name, man["state_epochs"][-1])))
    ecfg = dataclasses.replace(export_eval(approx), ivf_nprobe=nprobe)  # E4's search, as exported
    ranker = Ranker(model, train, ecfg, approx.teachers.export_batch_size, export_candidates(approx))
    assert ranker.approximate and (ranker.candidates == 40) == (name == "dnn")
    want = evaluate_topk(run, ranker.topk, ecfg)
    for split in ("valid", "test"):
        for key, value in want[split].items():
            assert metrics["states"][3][split][key] == pytest.approx(value, abs=1e-6), (split, key)


def test_the_only_evaluation_at_the_last_epoch_is_left_to_the_export(tmp_path, synth_run, monkeypatch):
    """max_epochs = eval_every (the scale config's case): the training's one evaluation would fall on its
    last epoch, which is then the best whatever it scores, so fit leaves it to the export -- no valid
    search during training -- and metrics.json's best valid R@50 and history hold E4's valid metrics. With
    an evaluation before the last epoch, both are still made during training."""
    from hetcomp_dist.teachers import runner

    calls = []
    real = runner.evaluate_ranker

    def counting(run_, ranker, ecfg, splits=("valid", "test")):
        calls.append(tuple(splits))
        return real(run_, ranker, ecfg, splits)

    monkeypatch.setattr(runner, "evaluate_ranker", counting)
    for epochs, in_training in ((4, 0), (8, 2)):
        run = copy_run(synth_run, tmp_path / f"run{epochs}")
        calls.clear()
        cfg = tiny_config(run, names=("mf",), max_epochs=epochs, eval_every=4, snapshot_every=1, patience=5)
        man = run_teacher(run, cfg, "mf")
        assert calls.count(("valid",)) == in_training, calls
        metrics = storage.read_json(RunLayout(run).teacher_metrics("mf"))
        e4 = metrics["states"][3]
        assert [h["epoch"] for h in metrics["history"]] == list(range(4, epochs + 1, 4))
        assert all(h["valid"] is not None for h in metrics["history"])
        assert man["state_epochs"][-1] == metrics["convergence_epoch"]
        if in_training == 0:
            assert metrics["convergence_epoch"] == 4
            assert metrics["best_valid_R@50"] == e4["valid"]["R@50"]
            assert metrics["history"][-1]["valid"] == e4["valid"]
        else:
            assert metrics["best_valid_R@50"] == max(h["valid"]["R@50"] for h in metrics["history"])


@pytest.mark.parametrize("name", ["mf", "dnn"])
def test_a_state_whose_search_would_probe_half_the_lists_is_exported_exactly(tmp_path, synth_run, name):
    """teachers.export_exact_share: with recall 1 out of reach at 2 of 7 lists and the next widening at
    4/7 >= 0.5, each state of an embedding teacher is exported by the exact flat ranker -- lists equal to
    a flat ranker's on the same snapshot, recall 1, search {"exact": true} -- and its metrics, read off
    that export, equal the exact ranker's own evaluation. NeuMF's candidate path searches its candidate
    vectors exhaustively instead (exact there would mean scoring every item with the network): its lists
    are a flat candidate search's, rescored, its recall measured against exact."""
    from hetcomp_dist.teachers.runner import evaluate_ranker, export_candidates, export_eval
    from hetcomp_dist.teachers.trajectory import Ranker

    run = copy_run(synth_run, tmp_path / "run")
    cfg = ivf_config(run, name, export_recall_target=1.0, export_exact_share=0.5)
    man = run_teacher(run, cfg, name)
    check_trajectory(run, name)
    layout, data = RunLayout(run), load_manifest(run)
    metrics = storage.read_json(layout.teacher_metrics(name))
    train = load_split(run, "train")
    model = model_class(name, cfg.teachers)(data["n_users"], data["n_items"], cfg.teachers, train)
    flat = dataclasses.replace(export_eval(cfg), index="flat")
    users = np.arange(data["n_users"])
    for i, st in enumerate(metrics["states"], start=1):
        ex = st["export"]
        assert ex["exact"] and ex["calibration_steps"] == 0
        model.load_state_dict(load_weights(layout.teacher_snapshot(name, man["state_epochs"][i - 1])))
        if name == "dnn":
            assert ex["search_breadth"] == {"flat_candidates": True}
            ranker = Ranker(
                model, train, export_eval(cfg), cfg.teachers.export_batch_size, export_candidates(cfg)
            ).exhaustive()
            exact = Ranker(model, train, flat, cfg.teachers.export_batch_size)
            # the reported recall is the flat candidate search's, on the report's users
            n = data["n_users"]
            drawn = np.random.default_rng(cfg.teachers.seed).choice(n, min(n, 300), replace=False)
            sample = np.sort(drawn[:150])
            assert ex["recall_vs_exact"] == pytest.approx(recall_vs_exact(ranker, exact, train, sample, K))
        else:
            assert ex["search_breadth"] == {"exact": True} and ex["recall_vs_exact"] == 1.0
            assert ex["calibration_recall"] < 1
            ranker = Ranker(model, train, flat, cfg.teachers.export_batch_size)
        want = ranker.topk(users, K, train.offsets, train.items)
        got = read_lists(layout.teacher_state(name, i), data["n_users"], data["shard_size"])
        assert [list(r) for r in got] == [[int(x) for x in row if x >= 0] for row in want], i
        ref = evaluate_ranker(run, ranker, flat)
        for split in ("valid", "test"):
            for key, value in ref[split].items():
                assert st[split][key] == pytest.approx(value, abs=1e-9), (i, split, key)


def test_check_export_recall_is_exact_when_every_list_is_probed(tmp_path, synth_run):
    """jobs/check_export_recall.py on a trained RUN, as a user runs it: every state of an inner-product
    and an L2 teacher; probing every list is an exhaustive search, so its recall against exact is 1."""
    import json
    import subprocess
    import sys

    run = copy_run(synth_run, tmp_path / "run")
    cfg = tiny_config(run, names=("mf", "ml"), max_epochs=4, eval_every=4, snapshot_every=1)
    for name in ("mf", "ml"):
        run_teacher(run, cfg, name)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(repo, "jobs", "check_export_recall.py"), "--run", run]
    out = subprocess.run(
        [*cmd, "--teachers", "mf,ml", "--users", "200", "--probes", "7:7,7:1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(got) == {"mf", "ml"} and all(len(got[t]) == 4 for t in got)  # E1..E4
    for t, states in got.items():
        for row in states.values():
            assert row["7/7"]["ours"] >= 0.999 and 0 < row["1/7"]["ours"] <= 1
            assert ("faiss_ip" in row["7/7"]) == (t == "mf")


def test_a_diverged_teacher_stops_before_its_snapshot_with_the_fix(tmp_path, synth_run):
    """BPR-MF at lr 1e30 overflows to a non-finite loss in its first epoch: the fit stops with an error
    naming the teacher, the epoch and the setting to lower, and writes no snapshot or checkpoint of the
    diverged weights; at a sane lr the same folder then trains from scratch."""
    from hetcomp_dist.errors import TrainingDiverged

    run = copy_run(synth_run, tmp_path / "run")
    layout = RunLayout(run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_config(run, names=("mf",), mf=TeacherTraining(lr=1e30))
        with pytest.raises(
            TrainingDiverged, match=r"teacher mf: epoch 1's mean loss is nan.*teachers\.mf\.lr \(now 1e\+30\)"
        ):
            run_teacher(run, cfg, "mf")
        assert not os.path.exists(layout.teacher_checkpoint("mf"))
        assert not os.path.exists(layout.teacher_snapshot("mf", 1))
        run_teacher(run, tiny_config(run, names=("mf",)), "mf")
    finally:
        torch.set_num_threads(threads)
    assert storage.read_json(layout.teacher_metrics("mf"))["resumed_from"] == []
    check_trajectory(run, "mf")


def test_a_diverged_teacher_actor_reports_the_fix_in_the_driver(tmp_path, ray_session, synth_run, capsys):
    """Through the actors: the driver's error and its log line carry the teacher's own message (what
    diverged and which setting to lower), not only Ray's wrapper (the task's name and pid); the other
    teacher still finishes."""
    from hetcomp_dist.teachers.actors import train_teachers

    run = copy_run(synth_run, tmp_path / "run")
    cfg = tiny_config(run, names=("mf", "ml"), mf=TeacherTraining(lr=1e30))
    fix = r"teacher mf: epoch 1's mean loss is nan: the training diverged -- "
    fix += r"lower teachers\.mf\.lr \(now 1e\+30\)"
    with pytest.raises(RuntimeError, match=r"teachers failed: mf \(TrainingDiverged: " + fix + r"\)$"):
        train_teachers(run, cfg)
    assert re.search(r"teacher mf failed: TrainingDiverged: " + fix, capsys.readouterr().err)
    assert storage.read_manifest(RunLayout(run).teacher("ml")) is not None
