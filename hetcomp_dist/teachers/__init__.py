"""Teachers: six heterogeneous recommenders trained in parallel (Ray actors) and their trajectories.

Public API: `REGISTRY` (name -> model class), `train_teachers(run, cfg)`, `ensemble_report(run, cfg)`.
Ray is imported only when `train_teachers` runs, so the models load without it.
"""

from __future__ import annotations

from hetcomp_dist.teachers.registry import REGISTRY


def train_teachers(run: str, cfg) -> dict:
    """See `hetcomp_dist.teachers.actors.train_teachers`."""
    from hetcomp_dist.teachers.actors import train_teachers as _train

    return _train(run, cfg)


def ensemble_report(run: str, cfg) -> dict:
    """See `hetcomp_dist.teachers.ensemble.ensemble_report`."""
    from hetcomp_dist.teachers.ensemble import ensemble_report as _report

    return _report(run, cfg)


__all__ = ["REGISTRY", "train_teachers", "ensemble_report"]
