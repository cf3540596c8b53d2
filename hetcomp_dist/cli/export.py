"""``hetcomp-dist export``: a serving bundle of a trained student (FAISS index, id maps, vectors, seen
items, model.json, config.yaml), loadable with ``hetcomp_dist.load_bundle``.

    hetcomp-dist export --run RUN --student hetcomp-mf --out bundles/hetcomp-mf
"""

from __future__ import annotations

import argparse

from hetcomp_dist.cli.recommend import add_student_argument

HELP = "Write a serving bundle of a trained student (load it with hetcomp_dist.load_bundle)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="RUN folder or URI with a finished student")
    add_student_argument(p)
    p.add_argument("--out", help="bundle folder or URI (default RUN/export/<student>)")
    p.add_argument("--config", help="YAML config (written into the bundle as config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist import storage
    from hetcomp_dist.config import load_config
    from hetcomp_dist.serving.bundle import export_bundle

    cfg = load_config(args.config, list(args.overrides), run=args.run)
    print(storage.redact(f"bundle: {export_bundle(cfg.run, cfg, args.student, args.out)}"))
    return 0
