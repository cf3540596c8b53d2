"""The whole pipeline: data -> teachers -> knowledge -> students -> report; prints where the report landed.

    python jobs/pipeline.py --smoke --run runs/smoke          # tiny synthetic data, local Ray
    python jobs/pipeline.py [--config FILE] [--input PATH --format F] [--run RUN] [--stages a,b]
                            [key=value ...]
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/pipeline.py --config cluster/pipeline.yaml --run s3://BUCKET/runs/NAME \\
        --input s3://BUCKET/data/users.dat --format citeulike

Finished stages (committed manifests matching the config) are skipped, so resubmitting the same
command after a failure resumes. Options and the exit status are shared by every job: see
hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_job  # noqa: E402


def add_arguments(p):
    from hetcomp_dist.pipeline import STAGES

    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")


def pipeline(cfg, args) -> str:
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.pipeline import run_pipeline

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else None
    run_pipeline(cfg, stages)
    return RunLayout(cfg.run).report_json


if __name__ == "__main__":
    sys.exit(run_job(pipeline, __doc__, add_arguments=add_arguments))
