"""``hetcomp-dist recommend``: every user's top-K items from a trained student, in the run's raw ids.

    hetcomp-dist recommend --run RUN                                  # every user, hetcomp-mf, K = 100
    hetcomp-dist recommend --run RUN --users ids.txt --k 20 --out s3://BUCKET/recs
    hetcomp-dist recommend --run RUN --exclude banned.txt --only catalogue.txt

Writes Parquet shards (``user``, ``items`` best first, ``scores``, ``cold_start``) and a manifest to
``--out`` (default RUN/recommend/<student>); prints the manifest's summary as one JSON line.
"""

from __future__ import annotations

import argparse
import json

from hetcomp_dist.config import EVAL_INDEXES, STUDENT_METHODS, STUDENT_MODELS
from hetcomp_dist.serving.recommend import COLD_START, Request

HELP = "Top-K recommendations for every user (or a list of users) from a trained student, in raw ids"
STUDENTS = tuple(f"{m}-{s}" for s in STUDENT_MODELS for m in STUDENT_METHODS)


def add_student_argument(p: argparse.ArgumentParser) -> None:
    """--student METHOD-MODEL, shared by recommend, export and jobs/recommend.py."""
    p.add_argument(
        "--student", default="hetcomp-mf", choices=STUDENTS, metavar="METHOD-MODEL",
        help="a finished student of the run (default hetcomp-mf)",
    )  # fmt: skip


def add_request_arguments(p: argparse.ArgumentParser, out_flag: str) -> None:
    """The options of a `Request` (the output folder under `out_flag`), shared with jobs/recommend.py."""
    add_student_argument(p)
    p.add_argument("--k", type=int, default=100, help="items per user (default 100)")
    p.add_argument("--users", help="raw user ids to answer: a text file, one per line, or Parquet")
    p.add_argument(out_flag, dest="out", help="output folder or URI (default RUN/recommend/<student>)")
    p.add_argument("--include-seen", action="store_true", help="keep items the user interacted with")
    p.add_argument("--exclude", help="raw item ids never to recommend (text, one per line, or Parquet)")
    p.add_argument("--only", help="raw item ids that alone may be recommended (text or Parquet)")
    p.add_argument(
        "--cold-start",
        choices=COLD_START,
        default="error",
        help="unknown user ids in --users: fail (error) or answer with the most popular items (popular)",
    )


def request_from_args(args: argparse.Namespace, distributed: bool | None = None) -> Request:
    return Request(
        student=args.student,
        k=args.k,
        users_file=args.users,
        out=args.out,
        include_seen=args.include_seen,
        exclude_file=args.exclude,
        only_file=args.only,
        cold_start=args.cold_start,
        distributed=distributed,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="RUN folder or URI with a finished student")
    add_request_arguments(p, "--out")
    p.add_argument(
        "--index",
        choices=EVAL_INDEXES,
        help="flat/blocked/pruned: exact (ties by item id); ivf/hnsw: approximate (default: eval.index)",
    )
    p.add_argument("--distributed", choices=("auto", "yes", "no"), default="auto", help="Ray Data map")
    p.add_argument("--config", help="YAML config (its eval section is used)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.batch_size=8192"
    )


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist import storage
    from hetcomp_dist.config import load_config
    from hetcomp_dist.serving.recommend import recommend

    over = [*args.overrides, *([f"eval.index={args.index}"] if args.index else [])]
    cfg = load_config(args.config, over, run=args.run)
    req = request_from_args(args, {"auto": None, "yes": True, "no": False}[args.distributed])
    m = recommend(cfg.run, cfg, req)
    keep = ("student", "k", "n_users", "n_cold_start", "index", "distributed", "wall_s", "users_per_s")
    print(storage.redact(json.dumps({**{k: m[k] for k in keep}, "out": args.out or cfg.run})))
    return 0
