"""Student training: batches per rank, each student learns, the TorchTrainer loop (local mode and
2-worker DDP), DKC rounds and the switch, early stopping, and recovery from a killed worker."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import load_config
from hetcomp_dist.data.dataset import load_split
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.registry import build_student
from hetcomp_dist.models.rowwise import RowwiseAdam
from hetcomp_dist.objectives.base import TrainTask
from hetcomp_dist.objectives.registry import build_objective
from hetcomp_dist.student import knowledge_io
from hetcomp_dist.student.batching import BatchSampler, RankData, user_range
from hetcomp_dist.student.trainer import train_student
from hetcomp_dist.testing.faults import KillOnce
from hetcomp_dist.testing.toyrun import replay_log, replay_round, write_toy_run

# one intra-op torch thread per test (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("_one_torch_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("toy") / "run")
    write_toy_run(run, n_users=300, n_items=400, rounds=3)
    return run


def _cfg(*overrides):
    return load_config(None, ["student.batch_size=256", "student.num_workers=0", *overrides])


def _lines(run, method, model):
    layout = RunLayout(run)
    return [json.loads(x) for x in open(layout.student_metrics(layout.student(method, model)))]


# ----------------------------------------------------------------------------------- batching
def test_ranks_draw_only_their_users_with_equal_steps(toy):
    train = load_split(toy, "train")
    samplers = [BatchSampler(RankData.load(toy, r, 2), 256, r, 2, seed=0, negatives=True) for r in range(2)]
    assert samplers[0].steps == samplers[1].steps == -(-len(train.items) // 256)
    assert samplers[0].local_batch + samplers[1].local_batch == 256
    for r, smp in enumerate(samplers):
        lo, hi = user_range(r, 2, 300)
        seen = []
        for b in smp.epoch(1):
            users = b.users.numpy()
            assert users.min() >= lo and users.max() < hi and len(np.unique(users)) == len(users)
            assert set(b.inter_users.tolist()) == set(users.tolist())
            for row, u in enumerate(users):  # train pairs of the batch users = their CSR rows
                got = np.sort(b.train_items[b.train_rows == row].numpy())
                np.testing.assert_array_equal(got, np.sort(train.row(u)))
            for u, i, j in zip(b.inter_users.tolist(), b.inter_items.tolist(), b.neg_items.tolist()):
                assert i in train.row(u) and j not in train.row(u)
            seen += list(zip(b.inter_users.tolist(), b.inter_items.tolist()))
        # every interaction of the rank's users is drawn in an epoch (the share covers them)
        own = {(u, int(i)) for u in range(lo, hi) for i in train.row(u)}
        assert own <= set(seen) and set(seen) <= own
    a = [b.inter_items.numpy() for b in samplers[0].epoch(3)]
    b = [b.inter_items.numpy() for b in samplers[0].epoch(3)]
    c = [b.inter_items.numpy() for b in samplers[0].epoch(4)]
    assert all((x == y).all() for x, y in zip(a, b)) and not all((x == y).all() for x, y in zip(a, c))


# --------------------------------------------------------------------------- each student learns
@pytest.mark.parametrize("model", ["mf", "ml", "dnn"])
@pytest.mark.parametrize("kind", ["L_O", "L_F", "wokd"])
def test_each_student_trains_and_its_loss_falls(toy, model, kind):
    losses = _train_losses(toy, model, kind, "exact")
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.92 * np.mean(losses[:5]), (losses[:5], losses[-5:])


def _train_losses(toy, model: str, kind: str, tail: str) -> list[float]:
    """Every step's loss over 6 epochs of one student (in-process, no Ray) on the toy run."""
    cfg = _cfg(f"student.model={model}", f"student.tail={tail}", "student.tail_samples=128")
    data = RankData.load(toy, 0, 1)
    torch.manual_seed(0)
    task = TrainTask(
        build_student(model, data.n_users, data.n_items, cfg.student),
        build_objective("wokd" if kind == "wokd" else "hetcomp", cfg),
    )
    if kind != "wokd":
        targets, pos = knowledge_io.load_round(toy, 0, 0, data.n_users)
        task.objective.set_knowledge(0, {"switch": kind == "L_F", "means": {}}, targets, pos)
    opt = RowwiseAdam(task.parameters(), lr=0.05)
    sampler = BatchSampler(data, 256, 0, 1, 0, task.objective.needs_negatives)
    losses = []
    for epoch in range(1, 7):
        for batch in sampler.epoch(epoch):
            loss = task(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            task.model.after_step()
            losses.append(float(loss.detach()))
    return losses


def test_sampled_tail_trains_too(toy):
    losses = _train_losses(toy, "mf", "L_O", "sampled")
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.92 * np.mean(losses[:5]), (losses[:5], losses[-5:])


# ------------------------------------------------------------------------- the loop, local mode
def test_local_mode_dkc_rounds_switch_and_rerun_skip(toy):
    cfg = _cfg("student.max_epochs=30", "student.patience=10")
    res = train_student(toy, cfg, dkc_fn=replay_round)
    lines = _lines(toy, "hetcomp", "mf")
    assert [x["epoch"] for x in lines] == list(range(1, 31))
    evals = [x for x in lines if "valid" in x]
    assert [x["epoch"] for x in evals] == [10, 20, 30]
    # DKC after the evaluations of epochs 10 and 20; round 2 carries the switch: L_F from epoch 21 on
    calls = [json.loads(x) for x in open(replay_log(toy))]
    assert [(c["round"], c["epoch"]) for c in calls] == [(1, 10), (2, 20)] and all(c["finite"] for c in calls)
    assert {x["loss_kind"] for x in lines if x["epoch"] <= 20} == {"L_O"}
    assert {x["loss_kind"] for x in lines if x["epoch"] > 20} == {"L_F"}
    assert res["switch_epoch"] == 20 and "dkc" not in evals[2]
    assert [(x["dkc"]["round"], x["dkc"]["switch"]) for x in evals[:2]] == [(1, False), (2, True)]
    # the best evaluation's test metrics are reported; far above chance (50 / ~380 unobserved items)
    best = max(evals, key=lambda x: x["valid"]["R@50"])
    assert res["best_epoch"] == best["epoch"] and res["test"] == best["test"]
    assert res["test"]["R@50"] > 0.4
    layout = RunLayout(toy)
    emb = storage.read_npz(layout.student_embeddings(layout.student("hetcomp", "mf")))
    assert emb["user"].shape == (300, 6) and emb["item"].shape == (400, 6)
    assert storage.read_manifest(layout.student("hetcomp", "mf"))["result"]["test"] == res["test"]
    assert train_student(toy, cfg, dkc_fn=replay_round) == res  # finished: skipped
    assert len(_lines(toy, "hetcomp", "mf")) == 30


def test_early_stopping_after_patience_evaluations(toy):
    cfg = _cfg(
        "student.method=wokd",
        "student.model=ml",
        "student.lr=1.0e-30",  # lr must be > 0; this one is below float32's resolution: nothing moves
        "student.weight_decay=0.0",
        "student.eval_every=1",
        "student.patience=2",
        "student.max_epochs=50",
    )
    res = train_student(toy, cfg)
    # no weight moves: the first evaluation is the best, then 2 without improvement -> stop at epoch 3
    assert res["epochs"] == 3 and res["best_epoch"] == 1
    assert [x["improved"] for x in _lines(toy, "wokd", "ml")] == [True, False, False]


def test_a_plateau_lowers_the_learning_rate_before_the_training_stops(toy):
    cfg = _cfg(
        "student.method=wokd",
        "student.model=ml",
        "student.lr=1.0e-30",  # nothing moves: every evaluation after the first is a plateau's
        "student.weight_decay=0.0",
        "student.eval_every=1",
        "student.patience=2",
        "student.max_epochs=50",
        "student.lr_drops=2",
        "student.lr_drop_factor=0.5",
    )
    res = train_student(toy, cfg)
    # best at 1; 2 flat evaluations -> drop at 3; 2 more -> drop at 5; 2 more -> stop at 7
    assert res["epochs"] == 7 and res["best_epoch"] == 1 and res["lr_drops"] == [3, 5]


def test_drop_lr_only_in_the_last_phase_and_only_as_often_as_allowed():
    from hetcomp_dist.student.worker import LoopState, drop_lr

    s = _cfg("student.lr_drops=1", "student.lr_drop_factor=0.25").student
    w = torch.nn.Parameter(torch.zeros(3))
    opt = RowwiseAdam([w], lr=0.004)
    loop = LoopState(bad_evals=5)
    assert not drop_lr(loop, opt, s, final_phase=False, epoch=40)  # HetComp before the switch: stop
    assert opt.param_groups[0]["lr"] == 0.004 and loop.bad_evals == 5
    assert drop_lr(loop, opt, s, final_phase=True, epoch=50)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001) and loop.bad_evals == 0
    assert loop.lr_drops == [50]
    loop.bad_evals = 5
    assert not drop_lr(loop, opt, s, final_phase=True, epoch=90)  # the one drop is spent
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_the_student_hash_holds_without_drops_and_moves_with_them(toy):
    from hetcomp_dist.student.trainer import student_hash

    base = student_hash(toy, _cfg("student.method=wokd"))
    assert student_hash(toy, _cfg("student.method=wokd", "student.lr_drop_factor=0.5")) == base
    one = student_hash(toy, _cfg("student.method=wokd", "student.lr_drops=1"))
    assert one != base
    assert (
        student_hash(toy, _cfg("student.method=wokd", "student.lr_drops=1", "student.lr_drop_factor=0.5"))
        != one
    )


def _real_run(path):
    """Synthetic data + synthetic teacher trajectories: the knowledge stage runs for real."""
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.testing.trajectories import write_trajectories

    cfg = load_config(None, ["synth.users=400", "synth.items=300", "data.shard_size=128"])
    synthesize(path, cfg.synth, cfg.data)
    write_trajectories(path, cfg, seed=0)
    return ["synth.users=400", "synth.items=300", "data.shard_size=128"]


def test_local_mode_with_the_knowledge_stage(tmp_path):
    run = str(tmp_path / "run")
    base = _real_run(run)
    cfg = _cfg(*base, "student.max_epochs=21", "student.patience=10")
    res = train_student(run, cfg)  # builds round 0 itself, then real DKC rounds at epochs 10 and 20
    layout = RunLayout(run)
    mine = layout.student_rounds(layout.student("hetcomp", "mf"))  # rounds >= 1: the student's own
    for r, epoch in ((0, 0), (1, 10), (2, 20)):
        m = knowledge_io.round_manifest(run, r, mine)
        assert m["epoch"] == epoch and set(m["means"]) == set(cfg.teachers.names)
    assert knowledge_io.round_manifest(run, 3, mine) is None
    assert knowledge_io.round_manifest(run, 1) is None  # nothing of this student's in the shared folder
    lines = _lines(run, "hetcomp", "mf")
    assert [x["round"] for x in lines if "valid" in x] == [0, 1, 2]  # the round each epoch trained on
    assert [x["dkc"]["round"] for x in lines if "dkc" in x] == [1, 2]
    assert res["epochs"] == 21 and np.isfinite(res["test"]["R@50"])


def _round_tables(run: str) -> dict:
    layout = RunLayout(run)
    mine = layout.student_rounds(layout.student("hetcomp", "mf"))
    out = {}
    for r in (1, 2):
        folder = layout.round(r, mine)
        out[r] = [storage.read_table(f).to_pylist() for f in storage.list_files(folder)]
    return out


def test_a_retraining_in_the_same_run_rebuilds_its_rounds(tmp_path):
    """Retraining hetcomp-mf with another seed in the same RUN must build its DKC rounds from its own
    embeddings, not reuse the previous training's rounds found at the same paths: its rounds equal
    those of the same seed-1 training in a fresh RUN."""
    same, fresh = str(tmp_path / "same"), str(tmp_path / "fresh")
    base = _real_run(same)
    _real_run(fresh)
    short = [*base, "student.max_epochs=21", "student.patience=10"]
    train_student(same, _cfg(*short))  # seed 0 first: leaves its rounds 1, 2 behind
    seed0 = _round_tables(same)
    train_student(same, _cfg(*short, "student.seed=1"))
    train_student(fresh, _cfg(*short, "student.seed=1"))
    retrained, reference = _round_tables(same), _round_tables(fresh)
    assert retrained == reference
    assert retrained != seed0  # the seeds' rounds differ, so the check above can tell them apart


# ------------------------------------------------------------------------- 2-worker DDP on Ray
@pytest.mark.slow
def test_ddp_two_workers_and_recovery_from_a_killed_worker(ray_session, tmp_path):
    """Two gloo workers train disjoint user ranges; only item-side gradients travel. Killing one
    worker mid-run (after the epoch-10 checkpoint) restarts the group from that checkpoint and ends
    with the metrics of an uninterrupted run with the same seed."""
    results = {}
    kill = KillOnce(rank=1, epoch=15, marker=str(tmp_path / "killed.marker"))
    for name, hooks in (("plain", None), ("killed", kill.hooks())):
        run = str(tmp_path / name)
        base = _real_run(run)
        cfg = load_config(
            None, [*base, "student.batch_size=256", "student.num_workers=2", "student.max_epochs=20"]
        )
        results[name] = train_student(run, cfg, hooks=hooks)
        lines = _lines(run, "hetcomp", "mf")
        assert [x["epoch"] for x in lines] == list(range(1, 21))
    plain, killed = results["plain"], results["killed"]
    assert os.path.exists(tmp_path / "killed.marker")  # the worker really was killed
    assert plain["resumed_from"] == [] and killed["resumed_from"] == [10]
    assert plain["world_size"] == 2 and plain["epochs"] == 20
    for split in ("valid", "test"):
        for key, v in plain[split].items():
            assert killed[split][key] == pytest.approx(v, abs=1e-6)
    # per-step traffic = the item table's gradient (MF: n_items x dim float32), whatever n_users is
    n_items = storage.read_manifest(RunLayout(str(tmp_path / "plain")).data)["n_items"]
    assert plain["allreduce_bytes_per_step"] == n_items * 6 * 4


def test_resume_refuses_a_rebuilt_round(toy):
    """A checkpoint must not silently resume on other targets than it trained on (a round rebuilt since)."""
    from hetcomp_dist.errors import InputError

    cfg = _cfg()
    targets, pos = knowledge_io.load_round(toy, 0, 0, 300)
    first = build_objective("hetcomp", cfg)
    first.set_knowledge(1, {"config_hash": "mine", "switch": False}, targets, pos)
    saved = first.state()
    again = build_objective("hetcomp", cfg)
    again.load_state(saved)
    with pytest.raises(InputError, match="rebuilt since this student's checkpoint"):
        again.set_knowledge(1, {"config_hash": "rebuilt", "switch": False}, targets, pos)
    again.load_state(saved)
    again.set_knowledge(1, {"config_hash": "mine", "switch": False}, targets, pos)  # unchanged round: fine
    assert again.state() == saved


def test_lo_topk_distils_the_head_of_t_u_in_l_o_only(toy):
    """student.lo_topk = k: L_O equals the paper's L_O on knowledge cut to its first k items (the rest
    of T_u in the tail), and L_F reads the whole T_u as before."""
    data = RankData.load(toy, 0, 1)
    targets, pos = knowledge_io.load_round(toy, 0, 0, data.n_users)
    k = 7
    assert targets.shape[1] > k and (targets[:, k:] >= 0).any()
    torch.manual_seed(0)
    model = build_student("mf", data.n_users, data.n_items, _cfg().student)
    batch = next(iter(BatchSampler(data, 256, 0, 1, 0, False).epoch(1)))

    def loss(lo_topk: int, t: np.ndarray, switch: bool) -> float:
        obj = build_objective("hetcomp", _cfg(f"student.lo_topk={lo_topk}"))
        obj.set_knowledge(0, {"switch": switch, "means": {}}, t, pos)
        return float(obj.loss(model, batch).detach())

    cut = np.ascontiguousarray(targets[:, :k])
    assert loss(k, targets, False) == pytest.approx(loss(0, cut, False), rel=1e-6)
    assert loss(k, targets, False) != pytest.approx(loss(0, targets, False), rel=1e-3)
    assert loss(k, targets, True) == pytest.approx(loss(0, targets, True), rel=1e-9)


def test_local_mode_rerun_resumes_from_its_checkpoint(tmp_path):
    """Local mode (no Train checkpoints, e.g. every reproduce_table2 training): a run that fails after
    its epoch-10 checkpoint resumes there on rerun -- DKC round included -- and ends with the metrics
    of an uninterrupted run with the same seed."""
    results = {}
    fail = KillOnce(rank=0, epoch=15, marker=str(tmp_path / "failed.marker"), mode="raise")
    for name, hooks in (("plain", None), ("failed", fail.hooks())):
        run = str(tmp_path / name)
        base = _real_run(run)
        cfg = _cfg(*base, "student.max_epochs=20")
        if hooks:
            with pytest.raises(Exception, match="injected failure at epoch 15"):
                train_student(run, cfg, hooks=hooks)
            assert storage.read_manifest(RunLayout(run).student("hetcomp", "mf")) is None
        results[name] = train_student(run, cfg, hooks=hooks)
        assert [x["epoch"] for x in _lines(run, "hetcomp", "mf")] == list(range(1, 21))
    plain, failed = results["plain"], results["failed"]
    assert plain["resumed_from"] == [] and failed["resumed_from"] == [10]
    for split in ("valid", "test"):
        for key, v in plain[split].items():
            assert failed[split][key] == pytest.approx(v, abs=1e-6)


@pytest.mark.parametrize(
    ("where", "epoch", "match"),
    [("step", 3, "epoch 3, step 2"), ("dkc_start", 10, "epoch 10, dkc_start")],
)
def test_hooks_reach_mid_epoch_and_a_dkc_round(toy, tmp_path, where, epoch, match):
    """The two points of the fault drills: a step inside an epoch, and a DKC round before rank 0
    builds it (so the round is not built)."""
    out = str(tmp_path / "student")
    fail = KillOnce(rank=0, epoch=epoch, marker=str(tmp_path / "marker"), where=where, mode="raise", step=2)
    with pytest.raises(Exception, match=f"injected failure at {match}"):
        train_student(toy, _cfg("student.max_epochs=20"), dkc_fn=replay_round, hooks=fail.hooks(), out=out)
    assert os.path.exists(tmp_path / "marker")
    assert knowledge_io.round_manifest(toy, 1, RunLayout(toy).student_rounds(out)) is None


@pytest.mark.parametrize("workers", [0, 2])
def test_a_diverged_student_stops_with_the_fix_and_reruns_from_scratch(tmp_path, request, workers):
    """At lr 1e30 the student's first epoch ends with a non-finite loss: the training stops there with an
    error naming the student, the epoch and the learning rate to lower, before any checkpoint -- in one
    process and on two Ray Train ranks, where it must arrive as that error after one attempt, not retried
    (student.max_failures) from a checkpoint that would diverge again; a rerun at a sane lr starts from
    scratch."""
    from hetcomp_dist.errors import TrainingDiverged

    if workers:
        request.getfixturevalue("ray_session")
    run = str(tmp_path / "run")
    base = [*_real_run(run), f"student.num_workers={workers}", "student.max_epochs=4"]
    with pytest.raises(TrainingDiverged, match=r"student hetcomp-mf: epoch 1's mean loss is nan.*now 1e\+30"):
        train_student(run, _cfg(*base, "student.lr=1e30"))
    assert storage.read_manifest(RunLayout(run).student("hetcomp", "mf")) is None
    res = train_student(run, _cfg(*base))
    assert res["resumed_from"] == [] and [x["epoch"] for x in _lines(run, "hetcomp", "mf")] == [1, 2, 3, 4]
