"""Which teachers earn their place in the ensemble, on validation only: leave-one-out, backward
elimination, then each kept teacher's weight; prints a table and one JSON line.

    python jobs/select_teachers.py --run RUN --config FILE [--no-weights]
    ray job submit --working-dir . -- python jobs/select_teachers.py --run s3://BUCKET/runs/NAME --config FILE

Needs the teachers of `teachers.names` committed in RUN (`hetcomp-dist teachers`). Reads only the
validation split. Use the result as `teachers.names` and `knowledge.weights` in the config. Options
and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_job  # noqa: E402


def add_arguments(p) -> None:
    p.add_argument("--no-weights", action="store_true", help="keep the config's weights (default: tune them)")
    p.add_argument(
        "--temperatures",
        default="",
        help="comma-separated values of knowledge.temperature to try, e.g. 5,10,20",
    )


def stage(cfg, args) -> str:
    import json

    from hetcomp_dist.knowledge.selection import select

    temps = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    out = select(cfg.run, cfg, tune_weights=not args.no_weights, temperatures=temps)
    print(f"{'teacher':<10}{'valid R@50 without it':>24}")
    for name, v in out["leave_one_out"].items():
        print(f"{name:<10}{v:>24.4f}" + ("   (dropped)" if name in out["dropped"] else ""))
    print(f"{'all':<10}{out['full']:>24.4f}")
    print(json.dumps(out), flush=True)
    best = out["valid_R@50"]
    chosen = f"teachers.names={out['kept']} knowledge.weights={out['weights']}"
    return f"{chosen} knowledge.temperature={out['temperature']:g} (valid R@50 {best:.4f})"


if __name__ == "__main__":
    sys.exit(run_job(stage, __doc__, add_arguments=add_arguments))
