"""Synthetic data: determinism, shard-size independence, power laws, and learnable structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hetcomp_dist import storage
from hetcomp_dist.cli import main as cli
from hetcomp_dist.config import DataConfig, SynthConfig
from hetcomp_dist.data.dataset import load_manifest, load_split
from hetcomp_dist.data.split import concat_rows
from hetcomp_dist.data.synth import GEN_BLOCK, generate_block, item_model, synthesize
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout


def splits(run: str):
    return [load_split(run, s) for s in ("train", "valid", "test")]


def test_deterministic_and_independent_of_shard_size(tmp_path):
    cfg = SynthConfig(users=2500, items=400, seed=3)  # > 2 generator blocks
    a = synthesize(str(tmp_path / "a"), cfg, DataConfig(shard_size=300, seed=3))
    b = synthesize(str(tmp_path / "b"), cfg, DataConfig(shard_size=300, seed=3))
    c = synthesize(str(tmp_path / "c"), cfg, DataConfig(shard_size=1000, seed=3))
    assert a["config_hash"] == b["config_hash"] != c["config_hash"]
    for x, y in zip(splits(str(tmp_path / "a")), splits(str(tmp_path / "c"))):
        np.testing.assert_array_equal(x.offsets, y.offsets)
        np.testing.assert_array_equal(x.items, y.items)
    train_a, train_b = (RunLayout(str(tmp_path / x)).split("train") for x in "ab")
    for s in range(len(storage.list_files(train_a))):
        ta = storage.read_table(storage.shard_path(train_a, s))
        assert ta.equals(storage.read_table(storage.shard_path(train_b, s)))
    assert len(storage.list_files(train_a)) == 9
    d = synthesize(
        str(tmp_path / "d"), SynthConfig(users=2500, items=400, seed=4), DataConfig(shard_size=300, seed=4)
    )
    assert d["n_interactions"] != a["n_interactions"] or not np.array_equal(
        splits(str(tmp_path / "d"))[0].items, splits(str(tmp_path / "a"))[0].items
    )


def test_blocks_are_pure_functions_of_seed_and_block():
    cfg = SynthConfig(users=3000, items=500, seed=1)
    items = item_model(cfg)
    one = generate_block(cfg, items, 2)
    again = generate_block(cfg, item_model(cfg), 2)
    np.testing.assert_array_equal(one.items, again.items)
    assert one.lo == 2 * GEN_BLOCK and one.n == 3000 - 2 * GEN_BLOCK


def test_lists_are_valid_and_power_law():
    cfg = SynthConfig(users=6000, items=3000, seed=0)
    items = item_model(cfg)
    rows = concat_rows([generate_block(cfg, items, b) for b in range(-(-cfg.users // GEN_BLOCK))])
    n_u = rows.lengths()
    assert n_u.min() >= cfg.min_interactions and n_u.max() <= cfg.items // 4
    for r in range(0, rows.n, 97):  # distinct, sorted items per user
        row = rows.items[rows.offsets[r] : rows.offsets[r + 1]]
        assert np.all(np.diff(row) > 0) and row.min() >= 0 and row.max() < cfg.items
    assert abs(n_u.mean() - cfg.mean_interactions) < 0.2 * cfg.mean_interactions
    assert n_u.max() > 10 * np.median(n_u)  # heavy-tailed activity
    pop = np.sort(np.bincount(rows.items, minlength=cfg.items))[::-1]
    assert pop[: cfg.items // 100].sum() > 0.05 * pop.sum()  # top 1% of items: 5x their uniform share
    # power law: log-popularity falls roughly linearly in log-rank over the body of the curve
    ranks = np.arange(10, 1000)
    slope = np.polyfit(np.log(ranks), np.log(pop[ranks] + 1), 1)[0]
    assert -2.0 < slope < -0.3


def _recall50(scores: np.ndarray, X_excl: np.ndarray, X_test: np.ndarray) -> float:
    s = np.where(X_excl > 0, -np.inf, scores)
    top = np.argpartition(-s, 50, axis=1)[:, :50]
    hits = np.take_along_axis(X_test, top, 1).sum(1)
    ev = X_test.sum(1) > 0
    return float((hits[ev] / X_test.sum(1)[ev]).mean())


def test_default_demo_data_is_learnable(tmp_path):
    """On the built-in demo dataset a simple MF (truncated SVD of train) and an item-neighbourhood
    model clearly beat popularity; the structure is not all popularity."""
    run = str(tmp_path / "demo")
    m = synthesize(run, SynthConfig(), DataConfig())
    assert (m["n_users"], m["n_items"]) == (3000, 2000)
    tr, va, te = splits(run)
    X = np.zeros((3000, 2000), np.float32)
    X[tr.user_ids(), tr.items] = 1
    Xv, Xt = np.zeros_like(X), np.zeros_like(X)
    Xv[va.user_ids(), va.items] = 1
    Xt[te.user_ids(), te.items] = 1
    excl = X + Xv
    pop = _recall50(np.tile(X.sum(0), (3000, 1)), excl, Xt)
    torch.manual_seed(0)
    u, s, v = torch.svd_lowrank(torch.from_numpy(X).float(), q=64, niter=3)
    mf = _recall50(((u * s) @ v.T).double().numpy(), excl, Xt)
    co = X.T @ X
    np.fill_diagonal(co, 0)
    knn = _recall50(X @ (co / np.sqrt(np.outer(co.sum(0), co.sum(0)) + 1e-9)), excl, Xt)
    assert mf > 1.5 * pop and knn > 1.5 * pop, (pop, mf, knn)


def test_cli_and_bad_parameters(tmp_path, capsys):
    run = str(tmp_path / "r")
    assert (
        cli.main(
            ["synth", "--users", "300", "--items", "120", "--seed", "5", "--out", run, "--shard-size", "100"]
        )
        == 0
    )
    m = load_manifest(run)
    assert m["seed"] == 5 and m["source"]["seed"] == 5 and m["n_users"] == 300
    assert "evaluated users" in capsys.readouterr().out
    with pytest.raises(InputError, match="synth.items"):
        synthesize(str(tmp_path / "x"), SynthConfig(items=10), DataConfig())
    assert not (tmp_path / "x").exists()
    assert cli.main(["synth", "--users", "0", "--out", str(tmp_path / "y")]) == 2


def test_an_out_folder_with_someone_elses_data_is_refused(tmp_path, capsys):
    home = tmp_path / "home"  # what `--out ~` points at
    (home / "data").mkdir(parents=True)
    (home / "data" / "thesis.tex").write_text("keep me")
    assert cli.main(["synth", "--users", "300", "--items", "120", "--out", str(home)]) == 2
    err = capsys.readouterr().err
    assert f"{home}/data: not a folder hetcomp_dist created" in err
    assert (home / "data" / "thesis.tex").read_text() == "keep me"
    assert sorted(p.name for p in home.iterdir()) == ["data"]  # and the lease is gone again


def test_a_failed_synth_removes_only_the_folder_it_made(tmp_path, monkeypatch):
    from hetcomp_dist.data import synth

    run = str(tmp_path / "run")
    out = RunLayout(run).data
    real = synth.generate_block

    def crash(cfg, items, block):
        if block == 1:
            raise RuntimeError("disk full")
        return real(cfg, items, block)

    monkeypatch.setattr(synth, "generate_block", crash)
    cfg = SynthConfig(users=3 * GEN_BLOCK, items=300)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize(run, cfg, DataConfig(shard_size=500))
    assert not storage.exists(out)  # what it wrote is gone

    def replaced(cfg, items, block):
        if block == 1:  # meanwhile the folder was cleared and remade by another invocation
            storage.begin_stage(out)
            storage.write_bytes_atomic(storage.join(out, "theirs.bin"), b"x")
            raise RuntimeError("disk full")
        return real(cfg, items, block)

    monkeypatch.setattr(synth, "generate_block", replaced)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize(run, cfg, DataConfig(shard_size=500))
    assert storage.exists(storage.join(out, "theirs.bin"))
