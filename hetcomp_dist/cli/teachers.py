"""``hetcomp-dist teachers``: train the teachers of a run concurrently (one Ray actor each) and export
their trajectories, or import a teacher's rankings made elsewhere. (``hetcomp-dist ensemble``:
``cli/ensemble.py``.)"""

from __future__ import annotations

import argparse
import json

from hetcomp_dist import storage
from hetcomp_dist.cli.ensemble import config_from_args
from hetcomp_dist.data.dataset import load_manifest
from hetcomp_dist.errors import InputError

HELP = "Train the teachers in parallel (Ray actors) and export their trajectories, or import one"
ACTIONS = ("train", "import")
USAGE = """actions:
  hetcomp-dist teachers [train] --run RUN [--teachers mf,ml,...] [key=value ...]
      train the built-in teachers of teachers.names (default: teachers.names); committed ones are skipped
  hetcomp-dist teachers import --run RUN --name NAME --states U1,U2,U3,U4 [--observed U]
      import a teacher's E1..E4 rankings: Parquet files (local paths or URIs) of `user` (raw id) and
      `items` (list of raw item ids, best first, at least knowledge.topk outside the user's train
      items); --observed: the order of each user's train items (default: the E4 file's). Checked in
      full before anything is written; then list NAME in teachers.names like a built-in teacher."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = USAGE
    p.add_argument(
        "action", nargs="?", default="train", metavar="{train,import}", help="what to do (default: train)"
    )
    p.add_argument("--run", required=True, help="RUN folder or URI (its data stage must be committed)")
    p.add_argument("--config", help="YAML config file (every field optional; defaults are the paper's)")
    p.add_argument("--teachers", help="train: comma-separated subset, e.g. mf,ml (default: teachers.names)")
    p.add_argument("--name", help="import: the teacher's name in teachers.names (not a built-in one)")
    p.add_argument("--states", help="import: the four state files E1..E4, comma-separated")
    p.add_argument("--observed", help="import: the observed-order file (default: the E4 file)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teachers.mf.lr=0.005"
    )


def _action(args: argparse.Namespace) -> str:
    """The action; a first override in its place (``teachers --run RUN key=value``) goes back to them."""
    if args.action in ACTIONS:
        return args.action
    if "=" in args.action:
        args.overrides = [args.action, *args.overrides]
        return "train"
    raise InputError(f"teachers {args.action}", "unknown action", f"choose one of {', '.join(ACTIONS)}")


def run(args: argparse.Namespace) -> int:
    action = _action(args)
    only = {"teachers": "train", "name": "import", "states": "import", "observed": "import"}
    wrong = [opt for opt, a in only.items() if getattr(args, opt) is not None and a != action]
    if wrong:
        raise InputError(f"--{wrong[0]}", f"not an option of `teachers {action}`", "see `teachers -h`")
    if action == "import":
        return _import(args)
    from hetcomp_dist.teachers.actors import train_teachers

    cfg = config_from_args(args)  # bad config / unknown teacher: InputError before anything starts
    load_manifest(cfg.run)  # a run without data: InputError before Ray starts
    summary = train_teachers(cfg.run, cfg)
    print(
        json.dumps(
            {
                "teachers": {
                    n: {"valid": m["valid"], "test": m["test"]} for n, m in summary["teachers"].items()
                },
                "trained": summary["trained"],
                "wall_s": round(summary["wall_s"], 1),
            }
        )
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from hetcomp_dist.teachers.imported import import_teacher

    if not args.name or not args.states:
        raise InputError("teachers import", "needs --name and --states", "see hetcomp-dist teachers -h")
    cfg = config_from_args(args)
    # made absolute here, in the driver, like every path option (`storage.absolute_args`)
    states = [storage.absolute(u.strip(), where="--states") for u in args.states.split(",")]
    observed = storage.absolute(args.observed, where="--observed")
    m = import_teacher(cfg.run, cfg, args.name, states, observed)
    print(json.dumps({"teacher": m["teacher"], "valid": m["valid"], "test": m["test"], "K": m["K"]}))
    return 0
