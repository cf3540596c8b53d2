"""Reproduce the paper's Table 2 on a run: w/o KD, RD, RRD, MTD, CL-DRD, DCD and HetComp for one student.

    python jobs/reproduce_table2.py --run RUN --student mf [--config FILE] [--methods rd,rrd] [key=value ...]
    ray job submit --working-dir . -- python jobs/reproduce_table2.py --run s3://BUCKET/runs/NAME --student mf

Needs a run with data, teachers and knowledge (e.g. from `hetcomp-dist run`). Every training -- and
each λ_KD candidate of a baseline (student.lambda_kd < 0: the grid student.lambda_grid, chosen on
validation) -- is a Ray task, so trainings run in parallel as far as the cluster's CPUs allow;
finished ones are skipped on rerun. Writes RUN/report/ (report.md in the paper's layout with the
paper's numbers and HetComp's improvement over the best baseline, curves.png with valid R@50 against
epoch for w/o KD, the best baseline and HetComp, and table2-<student>.md with each row's gap to the
paper and the chosen λ_KD).

Options and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_job  # noqa: E402
from hetcomp_dist.config import STUDENT_MODELS  # noqa: E402


def add_arguments(p) -> None:
    p.add_argument("--student", required=True, choices=STUDENT_MODELS, help="the student of the table")
    p.add_argument(
        "--methods",
        default="wokd,rd,rrd,mtd,cldrd,dcd,hetcomp",
        help="comma-separated rows to train (default: all seven)",
    )
    p.add_argument(
        "--cpus-per-method",
        type=float,
        default=1.0,
        help="CPUs reserved by each training task (its torch threads when training in-process)",
    )
    p.add_argument(
        "--ddp",
        action="store_true",
        help="train each method as a DDP TorchTrainer with student.num_workers workers "
        "(default: each training in its own task process, no DDP)",
    )


def stage(cfg, args) -> str:
    from hetcomp_dist.report.table2 import reproduce

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    out = reproduce(cfg.run, cfg, args.student, methods, args.cpus_per_method, args.ddp)
    print(open_text(out["table"]), flush=True)
    if out["failed"]:  # the table holds what finished; a rerun skips it and retries the rest
        raise RuntimeError(
            "trainings failed: " + "; ".join(f"{m}: {w[:300]}" for m, w in out["failed"].items())
        )
    return out["table"]


def open_text(path: str) -> str:
    from hetcomp_dist import storage

    return storage.read_bytes(path).decode()


if __name__ == "__main__":
    sys.exit(run_job(stage, __doc__, add_arguments=add_arguments))
