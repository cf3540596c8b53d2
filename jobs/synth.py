"""Generate the built-in synthetic dataset (synth.* settings) into RUN/data, split like real data.

    python jobs/synth.py [--config FILE] [--run RUN] [--smoke] [synth.users=N synth.items=M ...]
    ray job submit --working-dir . -- python jobs/synth.py --run s3://BUCKET/runs/NAME synth.users=1000000

Deterministic for a given config; a committed RUN/data with the same config is skipped. Options and
the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_job  # noqa: E402


def synth(cfg, args) -> str:
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.layout import RunLayout

    synthesize(cfg.run, cfg.synth, cfg.data)
    return RunLayout(cfg.run).data


if __name__ == "__main__":
    sys.exit(run_job(synth, __doc__))
