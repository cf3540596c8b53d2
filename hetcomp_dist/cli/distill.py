"""``hetcomp-dist distill``: train one student with one method on a run (Ray Train TorchTrainer).

    hetcomp-dist distill --run RUN --method hetcomp --student mf
    hetcomp-dist distill --run RUN --method wokd --student ml student.num_workers=4

Needs the run's data stage, and for HetComp its teachers (knowledge round 0 is built when missing).
Joins the Ray cluster when there is one (``ray.init()``), else starts a local one; with
``student.num_workers=0`` it trains in this process. Adds the result to RUN/report (a row of
report.json, report.md regenerated) and prints it as one JSON line: best epoch, valid/test R@10,
N@10, R@50, N@50, wall time and the output folder (baselines: the λ_KD chosen on validation).
"""

from __future__ import annotations

import argparse
import json

from hetcomp_dist.config import STUDENT_METHODS, STUDENT_MODELS

HELP = "Train a dimension-6 student (HetComp or a baseline) with Ray Train DDP"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="RUN folder or URI (data; teachers/knowledge for KD methods)")
    p.add_argument("--method", default="hetcomp", choices=STUDENT_METHODS, help="training method")
    p.add_argument("--student", default="mf", choices=STUDENT_MODELS, help="student model")
    p.add_argument("--config", help="YAML config (default: the paper's values)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. student.num_workers=4"
    )


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist.config import load_config
    from hetcomp_dist.data.dataset import load_manifest
    from hetcomp_dist.student.trainer import train_student

    overrides = [*args.overrides, f"student.method={args.method}", f"student.model={args.student}"]
    cfg = load_config(args.config, overrides, run=args.run)
    load_manifest(cfg.run)  # bad input fails here, before a Ray instance is started
    if cfg.student.num_workers > 0:
        import ray

        if not ray.is_initialized():
            ray.init()
    result = train_student(cfg.run, cfg)
    from hetcomp_dist.report import report

    extra = {k: result[k] for k in ("best_epoch", "wall_s", "lambda_kd", "lambda_grid") if k in result}
    if args.method not in ("hetcomp", "wokd"):
        extra.setdefault("lambda_kd", cfg.student.lambda_kd)  # a baseline trained with one given λ_KD
    report.add_result(
        cfg.run, args.method, args.student, result, extra
    )  # a row of RUN/report, report.md redone
    report.write_report(cfg.run, cfg.teachers.names)
    print(json.dumps(result, sort_keys=True))
    return 0
