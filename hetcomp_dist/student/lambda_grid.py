"""λ_KD for the baselines, chosen on validation (METHOD.md §4: from {1e-3, 1e-2, 1e-1, 1}).

With ``student.lambda_kd < 0`` a baseline trains once per value of ``student.lambda_grid``, each
into its own folder ``RUN/student/<method>-<model>/lambda=<λ>/`` (a complete student folder with
its own manifest, so a rerun skips finished values and resumes the rest). The value with the best
validation R@50 is *promoted*: its metrics.jsonl, emb.npz and model.json are copied to
``RUN/student/<method>-<model>/``, whose manifest records the chosen λ and every value's
validation R@50 -- so the method's folder looks like any other student folder (report, curves).

With ``student.lambda_prune_epoch = E > 0`` the search is pruned (one rung of successive halving,
down to one survivor): every candidate trains E epochs and pauses at its checkpoint; only the one
with the best validation R@50 so far trains on to early stopping. A survivor's best only rises, so
it is also the best of the whole grid; the pruned values are recorded with the epoch they stopped
at. A grid of four costs 4E + (the survivor's remaining epochs) instead of four full trainings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from hetcomp_dist import storage
from hetcomp_dist.config import BASELINES, Config, to_dict
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log

STAGE = "baselines"


def needs_grid(cfg: Config) -> bool:
    return cfg.student.method in BASELINES and cfg.student.lambda_kd < 0


def with_lambda(cfg: Config, lam: float) -> Config:
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, lambda_kd=float(lam)))


def grid_hash(run: str, cfg: Config, hash_fn: Callable[[str, Config], str]) -> str:
    """The grid's identity: every candidate's training hash (so any change reruns the choice), and the
    pruning epoch when the search is pruned."""
    parts: list = [[hash_fn(run, with_lambda(cfg, lam)) for lam in cfg.student.lambda_grid]]
    if cfg.student.lambda_prune_epoch:
        parts.append({"lambda_prune_epoch": cfg.student.lambda_prune_epoch})
    return storage.config_hash("lambda-grid", *parts)


def choose(results: Mapping[float, Mapping]) -> float:
    """The λ with the best validation R@50 (ties: the smaller λ, the weaker distillation)."""
    return max(sorted(results), key=lambda lam: (results[lam]["valid"]["R@50"], -lam))


def promote(run: str, cfg: Config, results: Mapping[float, Mapping], h: str) -> dict:
    """Copies the best candidate's files to the method folder and commits it; returns the result."""
    s = cfg.student
    lam = choose(results)
    if results[lam].get("paused"):
        raise RuntimeError(
            f"{s.method}-{s.model}: the best λ_KD {lam:g} paused at epoch {results[lam]['epochs']} "
            "and was not trained on (its result is not final)"
        )
    layout = RunLayout(run)
    src, dst = layout.lambda_candidate(s.method, s.model, lam), layout.student(s.method, s.model)
    # the files of a student folder that the report, the cost table and evaluation read
    for file in (layout.student_metrics, layout.student_embeddings, layout.student_summary):
        if storage.exists(file(src)):
            storage.write_bytes_atomic(file(dst), storage.read_bytes(file(src)))
    result = {
        **results[lam],
        "dir": dst,
        "lambda_kd": lam,
        "lambda_dir": src,
        "lambda_grid": {f"{k:g}": float(results[k]["valid"]["R@50"]) for k in sorted(results)},
        "wall_s": round(sum(float(r.get("wall_s", 0.0)) for r in results.values()), 2),
    }
    pruned = {f"{k:g}": int(results[k]["epochs"]) for k in sorted(results) if results[k].get("paused")}
    if pruned:
        result["lambda_pruned"] = pruned  # λ -> the epoch it stopped at
    storage.write_manifest(
        dst,
        {"config_hash": h, "stage": STAGE, "method": s.method, "model": s.model, "result": result},
        to_dict(cfg),
    )
    log(
        STAGE,
        f"{s.method}-{s.model}: λ_KD = {lam:g} chosen on validation R@50 "
        + ", ".join(
            f"{k}: {v:.4f}" + (f" (pruned at epoch {pruned[k]})" if k in pruned else "")
            for k, v in result["lambda_grid"].items()
        ),
    )
    return result


def survivor(results: Mapping[float, Mapping]) -> float | None:
    """The candidate a pruned search trains on: the best so far, when it is still paused (else None)."""
    lam = choose(results)
    return lam if results[lam].get("paused") else None


def merge_resumed(first: Mapping, final: Mapping) -> dict:
    """The survivor's final result, its wall time counting the pruning phase too."""
    return {**final, "wall_s": round(float(first.get("wall_s", 0.0)) + float(final.get("wall_s", 0.0)), 2)}


def train_with_grid(
    run: str, cfg: Config, train_fn: Callable[..., dict], hash_fn: Callable[[str, Config], str]
) -> dict:
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
    layout = RunLayout(run)
    done = storage.stage_is_done(layout.student(s.method, s.model), h)
    if done is not None:
        log(STAGE, f"{s.method}-{s.model}: λ_KD grid finished earlier with this config, skipped")
        return done["result"]
    results, stop = {}, s.lambda_prune_epoch
    for lam in s.lambda_grid:
        log(
            STAGE,
            f"{s.method}-{s.model}: training with λ_KD = {lam:g}" + (f" to epoch {stop}" if stop else ""),
        )
        results[float(lam)] = train_fn(
            run, with_lambda(cfg, lam), out=layout.lambda_candidate(s.method, s.model, lam), stop_at=stop
        )
    best = survivor(results) if stop else None
    if best is not None:
        log(
            STAGE,
            f"{s.method}-{s.model}: λ_KD = {best:g} leads at epoch {stop}; it trains on, the others stop",
        )
        final = train_fn(run, with_lambda(cfg, best), out=layout.lambda_candidate(s.method, s.model, best))
        results[best] = merge_resumed(results[best], final)
    return promote(run, cfg, results, h)
