"""Ingest interactions into RUN/data: validate, dense ids, the >= 5 filter, the per-user 60/20/20 split.

    python jobs/ingest.py [--config FILE] [--run RUN] [--smoke] [key=value ...]
    ray job submit --working-dir . -- \\
        python jobs/ingest.py --config FILE --run s3://BUCKET/runs/NAME \\
        --input s3://BUCKET/users.dat --format citeulike

With format `synthetic` (the default, and --smoke) it generates the built-in synthetic dataset instead.
A committed RUN/data with the same config is skipped.

Options and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_stage_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage_job("data", __doc__))
