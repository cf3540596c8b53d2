"""Which teachers earn their place in the ensemble g, and with which weights, on validation only.

`select` gives the ensemble's valid R@50 with every teacher and without each one (leave-one-out),
drops, one at a time, the teacher whose removal raises valid R@50 the most while a removal raises it
(backward elimination), then tunes each kept teacher's weight w_x by coordinate ascent over a small
grid and the rank-importance temperature T. Test metrics are never read.
"""

from __future__ import annotations

import dataclasses

from hetcomp_dist.config import Config
from hetcomp_dist.data.dataset import load_manifest
from hetcomp_dist.knowledge.teacher_ensemble import committed_teachers, ensemble_metrics
from hetcomp_dist.progress import log

STAGE = "selection"
WEIGHT_GRID = (0.5, 1.0, 1.5, 2.0)
TEMPERATURES = (5.0, 10.0, 20.0, 40.0)


def _valid(run: str, cfg: Config, names: list[str], weights: list[float], ctx: dict) -> float:
    key = (cfg.knowledge.temperature, *zip(names, weights))
    if key not in ctx["cache"]:
        m = ensemble_metrics(run, cfg, names, tuple(weights), ("valid",), ctx["data"], ctx["teachers"])
        ctx["cache"][key] = float(m["valid"]["R@50"])
    return ctx["cache"][key]


def select(
    run: str,
    cfg: Config,
    tune_weights: bool = True,
    grid: tuple[float, ...] = WEIGHT_GRID,
    temperatures: tuple[float, ...] = (),
) -> dict:
    """Leave-one-out, backward elimination and (optionally) weights, on valid R@50 of the ensemble.

    Args:
        run: a run whose teachers ``cfg.teachers.names`` are committed.
        cfg: the config (its knowledge.weights, when given, are the starting weights).
        tune_weights: coordinate ascent over `grid` for each kept teacher's weight.
        temperatures: values of knowledge.temperature to try last (with the chosen teachers and weights).

    Returns:
        {"full": valid R@50 with every teacher, "leave_one_out": {name: valid R@50 without it},
         "kept": [...], "dropped": [...], "weights": [...] (of the kept, in order), "temperature",
         "valid_R@50": final}.
    """
    data = load_manifest(run)
    ctx = {"data": data, "teachers": committed_teachers(run, cfg, data), "cache": {}}
    names = list(cfg.teachers.names)
    weights = list(cfg.knowledge.weights) or [1.0] * len(names)
    full = _valid(run, cfg, names, weights, ctx)
    loo = {}
    for i, name in enumerate(names):
        loo[name] = _valid(run, cfg, names[:i] + names[i + 1 :], weights[:i] + weights[i + 1 :], ctx)
        log(STAGE, f"without {name}: valid R@50 {loo[name]:.4f} (all: {full:.4f})")
    kept, w, best, dropped = list(names), list(weights), full, []
    while len(kept) > 1:
        trials = {
            n: _valid(run, cfg, kept[:i] + kept[i + 1 :], w[:i] + w[i + 1 :], ctx) for i, n in enumerate(kept)
        }
        name = max(trials, key=lambda n: (trials[n], n))
        if trials[name] <= best:
            break
        i = kept.index(name)
        kept, w, best = kept[:i] + kept[i + 1 :], w[:i] + w[i + 1 :], trials[name]
        dropped.append(name)
        log(STAGE, f"dropped {name}: valid R@50 {best:.4f}")
    if tune_weights:
        improved = True
        while improved:
            improved = False
            for i in range(len(kept)):
                for v in grid:
                    trial = w[:i] + [v] + w[i + 1 :]
                    score = _valid(run, cfg, kept, trial, ctx)
                    if score > best:
                        w, best, improved = trial, score, True
        log(STAGE, f"weights {dict(zip(kept, w))}: valid R@50 {best:.4f}")
    temperature = cfg.knowledge.temperature
    for t in temperatures:
        trial = dataclasses.replace(cfg, knowledge=dataclasses.replace(cfg.knowledge, temperature=float(t)))
        score = _valid(run, trial, kept, w, ctx)
        log(STAGE, f"temperature {t:g}: valid R@50 {score:.4f}")
        if score > best:
            temperature, best = float(t), score
    return {
        "full": full,
        "leave_one_out": loo,
        "kept": kept,
        "dropped": dropped,
        "weights": w,
        "temperature": temperature,
        "valid_R@50": best,
    }
