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
from hetcomp_dist.cli.recommend import add_request_arguments, request_from_args  # noqa: E402


def add_arguments(p) -> None:
    add_request_arguments(p, "--output")


def stage(cfg, args) -> str:
    from hetcomp_dist.pipeline import run_pipeline
    from hetcomp_dist.serving.recommend import recommend

    if args.smoke:
        run_pipeline(cfg, ("data", "teachers", "knowledge", "student"))
    req = request_from_args(args)
    from hetcomp_dist.layout import RunLayout

    recommend(cfg.run, cfg, req)
    return args.out or RunLayout(cfg.run).recommend(args.student)


if __name__ == "__main__":
    sys.exit(run_job(stage, __doc__, add_arguments=add_arguments))
