"""``hetcomp-dist ensemble``: every teacher's (E4) and the ensemble g's valid/test metrics."""

from __future__ import annotations

import argparse
import dataclasses
import json

from hetcomp_dist.config import Config, load_config, validate
from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report, format_table

HELP = "Metrics of each teacher (E4) and of their ensemble g, on valid and test"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="RUN folder or URI with committed teachers")
    p.add_argument("--config", help="YAML config the teachers were trained with (default: the paper's)")
    p.add_argument(
        "--teachers", help="comma-separated subset of teachers to ensemble (default: all of the config)"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. knowledge.temperature=5"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file + overrides, then --run and --teachers; every field checked."""
    cfg = load_config(args.config, list(args.overrides), run=args.run)
    teachers = cfg.teachers
    if getattr(args, "teachers", None):
        names = tuple(n.strip() for n in args.teachers.split(",") if n.strip())
        teachers = dataclasses.replace(teachers, names=names)
    return validate(dataclasses.replace(cfg, teachers=teachers))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    report = ensemble_report(cfg.run, cfg)
    print(json.dumps(report) if args.json else format_table(report))
    return 0
