"""λ_KD for the baselines, chosen on validation (METHOD.md §4: from {1e-3, 1e-2, 1e-1, 1}).

With ``student.lambda_kd < 0`` a baseline trains once per value of ``student.lambda_grid``, each
into its own folder ``RUN/student/<method>-<model>/lambda=<λ>/`` (a complete student folder with
its own manifest, so a rerun skips finished values and resumes the rest). The value with the best
validation R@50 is *promoted*: its metrics.jsonl, emb.npz and model.json are copied to
``RUN/student/<method>-<model>/``, whose manifest records the chosen λ and every value's
validation R@50 -- so the method's folder looks like any other student folder (report, curves).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.progress import log

BASELINES = ("rd", "rrd", "mtd", "cldrd", "dcd")
PROMOTED = ("metrics.jsonl", "emb.npz", "model.json")
STAGE = "baselines"


def needs_grid(cfg: Config) -> bool:
    return cfg.student.method in BASELINES and cfg.student.lambda_kd < 0


def method_dir(run: str, method: str, model: str) -> str:
    return storage.join(run, "student", f"{method}-{model}")


def grid_dir(run: str, method: str, model: str, lam: float) -> str:
    return storage.join(method_dir(run, method, model), f"lambda={lam:g}")


def with_lambda(cfg: Config, lam: float) -> Config:
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, lambda_kd=float(lam)))


def grid_hash(run: str, cfg: Config, hash_fn: Callable[[str, Config], str]) -> str:
    """The grid's identity: every candidate's training hash (so any change reruns the choice)."""
    return storage.config_hash("lambda-grid", [hash_fn(run, with_lambda(cfg, lam)) for lam in cfg.student.lambda_grid])


def choose(results: Mapping[float, Mapping]) -> float:
    """The λ with the best validation R@50 (ties: the smaller λ, the weaker distillation)."""
    return max(sorted(results), key=lambda lam: (results[lam]["valid"]["R@50"], -lam))


def promote(run: str, cfg: Config, results: Mapping[float, Mapping], h: str) -> dict:
    """Copies the best candidate's files to the method folder and commits it; returns the result."""
    s = cfg.student
    lam = choose(results)
    src, dst = grid_dir(run, s.method, s.model, lam), method_dir(run, s.method, s.model)
    for name in PROMOTED:
        path = storage.join(src, name)
        if storage.exists(path):
            storage.write_bytes_atomic(storage.join(dst, name), storage.read_bytes(path))
    result = {**results[lam], "dir": dst, "lambda_kd": lam, "lambda_dir": src,
              "lambda_grid": {f"{k:g}": float(results[k]["valid"]["R@50"]) for k in sorted(results)},
              "wall_s": round(sum(float(r.get("wall_s", 0.0)) for r in results.values()), 2)}
    storage.write_manifest(dst, {"config_hash": h, "stage": STAGE, "method": s.method, "model": s.model,
                                 "result": result})
    log(STAGE, f"{s.method}-{s.model}: λ_KD = {lam:g} chosen on validation R@50 "
               + ", ".join(f"{k}: {v:.4f}" for k, v in result["lambda_grid"].items()))
    return result


def train_with_grid(run: str, cfg: Config, train_fn: Callable[..., dict],
                    hash_fn: Callable[[str, Config], str]) -> dict:
    """Trains a baseline once per λ in ``student.lambda_grid`` (sequentially) and promotes the best.

    Args:
        run: the run root.
        cfg: the config, ``student.lambda_kd < 0``.
        train_fn: ``train_student(run, cfg, out=...)`` (one training into folder `out`).
        hash_fn: ``student_hash(run, cfg)`` of one training.

    Returns:
        the chosen training's result plus ``lambda_kd``, ``lambda_grid`` (λ -> valid R@50), ``dir``.
    """
    s = cfg.student
    h = grid_hash(run, cfg, hash_fn)
    done = storage.stage_is_done(method_dir(run, s.method, s.model), h)
    if done is not None:
        log(STAGE, f"{s.method}-{s.model}: λ_KD grid finished earlier with this config, skipped")
        return done["result"]
    results = {}
    for lam in s.lambda_grid:
        log(STAGE, f"{s.method}-{s.model}: training with λ_KD = {lam:g}")
        results[float(lam)] = train_fn(run, with_lambda(cfg, lam), out=grid_dir(run, s.method, s.model, lam))
    return promote(run, cfg, results, h)
