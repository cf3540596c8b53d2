"""Train the six teachers (one Ray actor each) and export their trajectories into RUN/teachers.

    python jobs/teachers.py [--config FILE] [--run RUN] [--smoke] [key=value ...]
    ray job submit --working-dir . -- python jobs/teachers.py --config FILE --run s3://BUCKET/runs/NAME

Needs RUN/data (--smoke makes it first). Finished teachers are skipped; a killed actor resumes from
its checkpoint.

Options and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_stage_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage_job("teachers", __doc__))
