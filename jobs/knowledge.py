"""Build the initial knowledge of RUN/knowledge: the ensemble's P+ and the round-0 targets.

    python jobs/knowledge.py [--config FILE] [--run RUN] [--smoke] [key=value ...]
    ray job submit --working-dir . -- python jobs/knowledge.py --config FILE --run s3://BUCKET/runs/NAME

Needs RUN/teachers (--smoke makes the earlier stages first). A committed round is skipped.

Options and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_stage_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage_job("knowledge", __doc__))
