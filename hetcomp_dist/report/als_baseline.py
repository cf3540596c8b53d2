"""The report's small-model baseline: implicit's ALS at the student's dimension and at the teachers'.

What distillation buys is measured against the strongest simple model of the same size: for each
dimension d (`report.als_dims`, by default the student's and the teachers'), every (alpha, lambda) of
the grid trains ALS -- the ALS teacher's own model and solver (models/als.py) -- for up to
`als_iterations` iterations, evaluated on valid every `als_eval_every` (and after the last) and stopped
after `als_patience` evaluations without a better valid R@50. The best valid R@50 over the grid and the
evaluated iterations picks d's setting; its valid and test metrics come from the package's one
evaluation function (`evaluate_embeddings`, metric ip). Only validation chooses; the test split is read
once per dimension.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.data.dataset import CSR, load_manifest, load_split
from hetcomp_dist.evaluation.evaluate import evaluate_embeddings
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.als import ALS
from hetcomp_dist.progress import log


def als_dims(cfg: Config) -> tuple[int, ...]:
    """The dimensions of the baseline's rows: `report.als_dims`, or the student's and the teachers'."""
    dims = cfg.report.als_dims or (cfg.student.dim, cfg.teachers.dim)
    return tuple(dict.fromkeys(dims))


def als_hash(run: str, cfg: Config) -> str:
    """What the rows are computed from: the data, the grid, the dimensions, the seed, the retrieval."""
    grid = {
        k: v
        for k, v in dataclasses.asdict(cfg.report).items()
        if k.startswith("als_") and k != "als_baseline"
    }
    ev = {
        k: v
        for k, v in dataclasses.asdict(cfg.eval).items()
        if k not in ("batch_size", "distributed_min_users")
    }
    data = load_manifest(run)["config_hash"]
    return storage.config_hash("als-baseline", data, grid, als_dims(cfg), cfg.teachers.seed, ev)


def _train_point(run: str, train: CSR, m: dict, cfg: Config, dim: int, alpha: float, reg: float) -> dict:
    """One grid point: ALS from the seed's initial factors, early-stopped on valid R@50."""
    r = cfg.report
    torch.manual_seed(cfg.teachers.seed)
    model = ALS(
        m["n_users"], m["n_items"], dataclasses.replace(cfg.teachers, dim=dim, als_alpha=alpha, als_reg=reg)
    )
    rng = np.random.default_rng(cfg.teachers.seed)  # ALS draws nothing; fit_epoch's signature wants one
    best = {"valid_R@50": -1.0, "iterations": 0, "train_s": 0.0}
    t0, train_s, bad = time.perf_counter(), 0.0, 0
    for it in range(1, r.als_iterations + 1):
        t1 = time.perf_counter()
        model.fit_epoch(train, rng, cfg.teachers.batch_size, None)
        train_s += time.perf_counter() - t1
        if it % r.als_eval_every and it < r.als_iterations:
            continue
        user, item, _ = model.embeddings()
        valid = evaluate_embeddings(run, user, item, "ip", cfg.eval, ("valid",), where="ALS baseline")
        if valid["valid"]["R@50"] > best["valid_R@50"]:
            best = {
                "valid_R@50": float(valid["valid"]["R@50"]),
                "iterations": it,
                "train_s": train_s,
                "emb": (user.copy(), item.copy()),
            }
            bad = 0
        else:
            bad += 1
            if bad >= r.als_patience:
                break
    return {"dim": dim, "alpha": alpha, "reg": reg, **best, "wall_s": time.perf_counter() - t0}


def als_rows(run: str, cfg: Config) -> list[dict]:
    """The baseline's rows, one per dimension of `als_dims(cfg)`, for a run with a committed data stage.

    Returns:
        [{"model": "ALS", "dim", "alpha", "reg", "iterations", "params", "train_s" (the chosen setting's
          solver time to its chosen iteration), "wall_s" (the chosen setting's run: its iterations and
          validation evaluations), "search_s" (the whole grid of that dimension), "valid", "test"
          ({"R@10", "N@10", "R@50", "N@50"}), "grid" ([{"alpha", "reg", "iterations", "valid_R@50"}])}].
    """
    m = load_manifest(run)
    train = load_split(run, "train", m)
    rows = []
    for dim in als_dims(cfg):
        t0 = time.perf_counter()
        points = [
            _train_point(run, train, m, cfg, dim, alpha, reg)
            for alpha in cfg.report.als_alphas
            for reg in cfg.report.als_regs
        ]
        best = max(points, key=lambda p: p["valid_R@50"])  # the first of equals: grid order
        metrics = evaluate_embeddings(
            run, *best["emb"], "ip", cfg.eval, ("valid", "test"), where="ALS baseline"
        )
        row = {
            "model": "ALS",
            **{k: best[k] for k in ("dim", "alpha", "reg", "iterations", "train_s", "wall_s")},
            "params": (m["n_users"] + m["n_items"]) * dim,
            "search_s": time.perf_counter() - t0,
            "valid": metrics["valid"],
            "test": metrics["test"],
            "grid": [{k: p[k] for k in ("alpha", "reg", "iterations", "valid_R@50")} for p in points],
        }
        log(
            "report",
            f"ALS baseline d={dim}: alpha {row['alpha']:g}, reg {row['reg']:g}, "
            f"{row['iterations']} iterations (valid R@50 {row['valid']['R@50']:.4f}, "
            f"test {row['test']['R@50']:.4f}; grid of {len(points)} in {row['search_s']:.1f}s)",
        )
        rows.append(row)
    return rows


def als_baseline(run: str, cfg: Config) -> dict:
    """{"config_hash", "rows"}: the report's stored rows when they were computed under this config
    (a rerun of the report does not redo the grid), else `als_rows` now."""
    h = als_hash(run, cfg)
    meta_path = RunLayout(run).report_meta
    stored = (storage.read_json(meta_path) if storage.exists(meta_path) else {}).get("als_baseline") or {}
    if stored.get("config_hash") == h:
        log("report", "ALS baseline is up to date; skipping")
        return stored
    return {"config_hash": h, "rows": als_rows(run, cfg)}
