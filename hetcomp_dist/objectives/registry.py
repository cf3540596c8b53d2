"""The explicit registry of training methods: name -> objective class (HetComp, w/o KD, the baselines)."""

from __future__ import annotations

import dataclasses

from hetcomp_dist.config import Config, StudentConfig
from hetcomp_dist.objectives.base import Objective
from hetcomp_dist.objectives.baselines import (
    CLDRDObjective,
    DCDObjective,
    MTDObjective,
    RDObjective,
    RRDObjective,
)
from hetcomp_dist.objectives.hetcomp import HetCompObjective, WoKDObjective

METHODS: dict[str, type[Objective]] = {
    "hetcomp": HetCompObjective,
    "wokd": WoKDObjective,
    "rd": RDObjective,
    "rrd": RRDObjective,
    "mtd": MTDObjective,
    "cldrd": CLDRDObjective,
    "dcd": DCDObjective,
}


def build_objective(method: str, cfg: Config) -> Objective:
    """The objective of `method` (hetcomp | wokd; baselines register here)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    return METHODS[method](cfg)


def model_config(cfg: Config) -> StudentConfig:
    """The student settings the model is built with for `cfg.student.method`.

    CML's unit-ball clip (`ml_max_norm`) belongs to CML's hinge: it applies to the ML student only
    where the objective trains the student's base loss (w/o KD and the baselines). HetComp trains no
    base loss, and clipped rows keep its logits in [-4 r^2, 0], too narrow for the listwise losses
    against a full-catalogue tail.
    """
    s = cfg.student
    if s.model == "ml" and not METHODS[s.method].needs_negatives and s.ml_max_norm:
        return dataclasses.replace(s, ml_max_norm=0.0)
    return s
