"""``hetcomp-dist teachers``: train the teachers of a run concurrently (one Ray actor each) and
export their trajectories. (``hetcomp-dist ensemble``: ``cli/ensemble.py``.)"""

from __future__ import annotations

import argparse
import json

from hetcomp_dist.cli.ensemble import config_from_args
from hetcomp_dist.data.dataset import load_manifest

HELP = "Train the teachers in parallel (Ray actors) and export their trajectories"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="RUN folder or URI (its data stage must be committed)")
    p.add_argument("--config", help="YAML config file (every field optional; defaults are the paper's)")
    p.add_argument(
        "--teachers",
        help="comma-separated names, e.g. mf,ml,als,iknn (default: teachers.names, the paper's six)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teachers.mf.lr=0.005"
    )


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist.teachers.actors import train_teachers

    cfg = config_from_args(args)  # bad config / unknown teacher: InputError before anything starts
    load_manifest(cfg.run)  # a run without data: InputError before Ray starts
    summary = train_teachers(cfg.run, cfg)
    print(
        json.dumps(
            {
                "teachers": {
                    n: {"valid": m["valid"], "test": m["test"]} for n, m in summary["teachers"].items()
                },
                "trained": summary["trained"],
                "wall_s": round(summary["wall_s"], 1),
            }
        )
    )
    return 0
