"""Teachers: six heterogeneous recommenders trained in parallel (Ray actors) and their trajectories.

Public API: `REGISTRY` (name -> model class), `train_teachers(run, cfg)`, `ensemble_report(run, cfg)`.
"""

from hetcomp_dist.teachers.registry import REGISTRY

__all__ = ["REGISTRY"]
