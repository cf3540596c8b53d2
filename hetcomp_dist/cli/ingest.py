"""``hetcomp-dist ingest``: a file of interactions -> ``RUN/data`` (dense ids, filter, 60/20/20 split).

Flags override the ``data`` section of ``--config``; `split_summary` is shared with ``synth``.
"""

from __future__ import annotations

import argparse
import json

from hetcomp_dist.config import Config, load_config
from hetcomp_dist.data.readers import FORMATS

HELP = "Ingest interactions (CiteULike users.dat, CSV, Parquet; local or URI) into RUN/data"

# flag -> DataConfig field
_FLAGS = {
    "input": "input",
    "format": "format",
    "user_col": "user_col",
    "item_col": "item_col",
    "rating_col": "rating_col",
    "rating_threshold": "rating_threshold",
    "delimiter": "csv_delimiter",
    "shard_size": "shard_size",
    "seed": "seed",
    "min_user_interactions": "min_user_interactions",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="interactions file or folder: local path or s3:// / gs:// URI")
    p.add_argument("--format", choices=FORMATS, help="input format")
    p.add_argument(
        "--run", "--out", dest="run", help="RUN folder or URI (written: RUN/data); default: the config's run"
    )
    p.add_argument("--user-col", help="user id column (csv/parquet; ids may be integers or strings)")
    p.add_argument("--item-col", help="item id column (csv/parquet)")
    p.add_argument("--rating-col", help="optional rating column; rows below --rating-threshold are dropped")
    p.add_argument("--rating-threshold", type=float, help="keep rows with rating >= this (default 0)")
    p.add_argument("--delimiter", help="CSV field delimiter (default ,)")
    p.add_argument("--min-user-interactions", type=int, help="user filter (default 5, the paper's)")
    p.add_argument("--shard-size", type=int, help="users per shard (default 50000)")
    p.add_argument("--seed", type=int, help="split seed (default 0)")
    p.add_argument("--config", help="YAML config file; flags override its data section")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.seed=1")


def config_with_flags(args: argparse.Namespace, flags: dict[str, str], section: str = "data") -> Config:
    """The config file (or defaults) with the given flags applied to one section, type-checked."""
    over = list(getattr(args, "overrides", []))  # the flags win over key=value overrides
    for flag, field in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            over.append(f"{section}.{field}={json.dumps(value)}")
    if getattr(args, "run", None):
        over.append(f"run={json.dumps(args.run)}")
    return load_config(args.config, over)


def split_summary(m: dict) -> str:
    return (
        f"{m['n_users']:,} users, {m['n_items']:,} items, {m['n_interactions']:,} interactions; split "
        f"train {m['n_train']:,} / valid {m['n_valid']:,} / test {m['n_test']:,}; "
        f"{m['n_eval_users']:,} evaluated users; shard_size {m['shard_size']:,}, seed {m['seed']}"
    )


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist import storage
    from hetcomp_dist.data.ingest import ingest
    from hetcomp_dist.errors import InputError

    cfg = config_with_flags(args, _FLAGS)
    if cfg.data.format == "synthetic":
        raise InputError(
            "--format", "missing", "pass --format citeulike|csv|parquet (for synthetic data use `synth`)"
        )
    m = ingest(cfg.run, cfg.data, cfg)
    print(json.dumps(m, indent=2) if args.json else storage.redact(f"{cfg.run}: {split_summary(m)}"))
    return 0
