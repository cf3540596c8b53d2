"""``hetcomp-dist evaluate``: Recall/NDCG@{10,50} of saved embeddings on a run (FAISS, both protocols)."""

from __future__ import annotations

import argparse
import json

from hetcomp_dist.config import EVAL_INDEXES

HELP = "Evaluate user/item embeddings (.npz with arrays `user` and `item`) on a run's valid and test splits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="RUN folder or URI (its data stage must be committed)")
    p.add_argument(
        "--embeddings",
        required=True,
        help=".npz with float arrays `user` (n_users, d) and `item` (n_items, d)",
    )
    p.add_argument(
        "--metric",
        choices=("ip", "l2"),
        default="ip",
        help="score = dot product (ip) or -squared distance (l2)",
    )
    p.add_argument(
        "--index",
        choices=EVAL_INDEXES,
        help="flat (default), blocked, pruned: exact; ivf, hnsw: approximate (see README)",
    )
    p.add_argument(
        "--save-topk", help="folder for per-protocol top-K shards (<folder>/<split>/shard-*.parquet)"
    )
    p.add_argument(
        "--distributed",
        choices=("auto", "yes", "no"),
        default="auto",
        help="Ray Data map over shards (auto: from eval.distributed_min_users users)",
    )
    p.add_argument("--config", help="YAML config file (its eval section is used)")
    p.add_argument("--json", action="store_true", help="print only the metrics as one JSON object")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.batch_size=8192"
    )


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist import storage
    from hetcomp_dist.config import load_config
    from hetcomp_dist.errors import InputError
    from hetcomp_dist.evaluation.evaluate import evaluate_embeddings

    cfg = load_config(args.config, [*args.overrides, *([f"eval.index={args.index}"] if args.index else [])])
    arrays = storage.read_npz(args.embeddings)
    for name in ("user", "item"):
        if name not in arrays:
            raise InputError(
                args.embeddings,
                f"no array named {name!r} (has {sorted(arrays)})",
                "save with numpy.savez(path, user=U, item=I)",
            )
    dist = {"auto": None, "yes": True, "no": False}[args.distributed]
    res = evaluate_embeddings(
        args.run,
        arrays["user"],
        arrays["item"],
        args.metric,
        cfg.eval,
        save_topk=args.save_topk,
        distributed=dist,
        where=args.embeddings,
    )
    if args.json:
        print(json.dumps(res))
    else:
        for split in ("valid", "test"):
            print(f"{split:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in res[split].items()))
    return 0
