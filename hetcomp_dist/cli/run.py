"""``hetcomp-dist run``: the whole pipeline (data -> teachers -> knowledge -> students -> report)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from hetcomp_dist import storage
from hetcomp_dist.config import DATA_FORMATS, Config, load_config, validate
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.pipeline import STAGES, run_pipeline

# the built-in synthetic dataset's settings when no --config is given (configs/demo.yaml)
DEMO_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")

HELP = (
    "run the whole pipeline (ingest -> teachers -> knowledge -> students -> report); "
    "finished stages are skipped"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (every field optional; defaults are the paper's)")
    p.add_argument(
        "--input", help="interactions: local path or s3:// / gs:// URI (default: built-in synthetic data)"
    )
    p.add_argument("--format", choices=DATA_FORMATS, help="input format")
    p.add_argument("--run", "--out", dest="run", help="RUN folder or URI (default: config 'run')")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. student.model=ml"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file + key=value overrides, then --input/--format/--run (taken verbatim, never YAML-parsed).
    With no --config on the synthetic dataset: the demo settings (configs/demo.yaml) under the overrides."""
    if args.input and not args.format:
        raise InputError("--format", "an --input needs its --format", "add --format citeulike|csv|parquet")
    cfg = _with_data_args(load_config(args.config, list(args.overrides), run=args.run or None), args)
    if not args.config and cfg.data.format == "synthetic":  # the built-in demo: training cut short
        cfg = _with_data_args(load_config(DEMO_CONFIG, list(args.overrides), run=args.run or None), args)
    return validate(cfg)


def _with_data_args(cfg: Config, args: argparse.Namespace) -> Config:
    data = dataclasses.replace(
        cfg.data, input=args.input or cfg.data.input, format=args.format or cfg.data.format
    )
    return dataclasses.replace(cfg, data=data)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else None
    run_pipeline(cfg, stages)
    print(storage.redact(f"report: {RunLayout(cfg.run).report_md}"))
    return 0
