"""``hetcomp-dist synth``: a deterministic synthetic dataset written as ``RUN/data`` shards."""

from __future__ import annotations

import argparse
import json

from hetcomp_dist.cli.ingest import split_summary
from hetcomp_dist.config import load_config

HELP = "Generate a synthetic dataset (power-law, low-rank + neighbourhood + popularity) into RUN/data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, help="number of users (default 3000, the built-in demo)")
    p.add_argument("--items", type=int, help="number of items (default 2000)")
    p.add_argument("--seed", type=int, help="generator and split seed (default 0)")
    p.add_argument("--mean-interactions", type=float, help="mean interactions per user (default 20)")
    p.add_argument(
        "--run", "--out", dest="run", help="RUN folder or URI (written: RUN/data); default: the config's run"
    )
    p.add_argument("--shard-size", type=int, help="users per shard (default 50000)")
    p.add_argument("--config", help="YAML config file; flags override its synth/data sections")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. synth.topics=8")


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist import storage
    from hetcomp_dist.data.synth import synthesize

    flags = {
        "synth.users": args.users,
        "synth.items": args.items,
        "synth.seed": args.seed,
        "synth.mean_interactions": args.mean_interactions,
        "data.seed": args.seed,  # one seed: data and split
        "data.shard_size": args.shard_size,
        "run": args.run,
    }
    over = [*args.overrides, *(f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None)]
    cfg = load_config(args.config, over)
    m = synthesize(cfg.run, cfg.synth, cfg.data, cfg)
    print(json.dumps(m, indent=2) if args.json else storage.redact(f"{cfg.run}: {split_summary(m)}"))
    return 0
