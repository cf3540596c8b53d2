"""Every user's top-K items from a trained student, in the run's raw ids, as Parquet; prints where.

    python jobs/recommend.py --run RUN [--student hetcomp-mf] [--k 100] [--users FILE] [--output URI]
    ray job submit --working-dir . -- python jobs/recommend.py --run s3://BUCKET/runs/NAME \\
        --output s3://BUCKET/recs/NAME

Needs a finished student (with --smoke the stages up to the student run first). Writes Parquet shards
(user, items best first, scores, cold_start) and a manifest to --output (default
RUN/recommend/<student>). At or above eval.distributed_min_users users it runs as a Ray Data actor pool
over the user shards. Options and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_job  # noqa: E402
from hetcomp_dist.cli.recommend import STUDENTS  # noqa: E402
from hetcomp_dist.serving.recommend import COLD_START  # noqa: E402


def add_arguments(p) -> None:
    p.add_argument("--student", default="hetcomp-mf", choices=STUDENTS, metavar="METHOD-MODEL")
    p.add_argument("--k", type=int, default=100, help="items per user (default 100)")
    p.add_argument("--users", help="raw user ids to answer (text, one per line, or Parquet)")
    p.add_argument("--output", help="output folder or URI (default RUN/recommend/<student>)")
    p.add_argument("--include-seen", action="store_true", help="keep items the user interacted with")
    p.add_argument("--exclude", help="raw item ids never to recommend")
    p.add_argument("--only", help="raw item ids that alone may be recommended")
    p.add_argument(
        "--cold-start", choices=COLD_START, default="error", help="unknown user ids: fail or popular"
    )


def stage(cfg, args) -> str:
    from hetcomp_dist.pipeline import run_pipeline
    from hetcomp_dist.serving.recommend import Request, recommend

    if args.smoke:
        run_pipeline(cfg, ("data", "teachers", "knowledge", "student"))
    req = Request(
        student=args.student,
        k=args.k,
        users_file=args.users,
        out=args.output,
        include_seen=args.include_seen,
        exclude_file=args.exclude,
        only_file=args.only,
        cold_start=args.cold_start,
    )
    from hetcomp_dist.layout import RunLayout

    recommend(cfg.run, cfg, req)
    return args.output or RunLayout(cfg.run).recommend(args.student)


if __name__ == "__main__":
    sys.exit(run_job(stage, __doc__, add_arguments=add_arguments))
