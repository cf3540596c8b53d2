"""Train the students of pipeline.students x pipeline.methods with Ray Train (DDP) into RUN/student.

    python jobs/student.py [--config FILE] [--run RUN] [--smoke] [key=value ...]
    ray job submit --working-dir . -- python jobs/student.py --config FILE --run s3://BUCKET/runs/NAME

Needs RUN/knowledge (--smoke makes the earlier stages first); DKC rounds run every knowledge.period
epochs. Resumes from the last committed checkpoint.

Options and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_stage_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage_job("student", __doc__))
