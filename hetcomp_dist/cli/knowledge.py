"""``hetcomp-dist knowledge``: build round 0 (P+ and the E1 targets), or run one DKC round by hand.

    hetcomp-dist knowledge --run RUN                                   # round 0
    hetcomp-dist knowledge --run RUN --round 1 --epoch 10 --emb E.npz   # DKC round 1 (first call)

Prints the round's manifest (means per teacher, switch) as one JSON line. A committed round of the
same inputs is returned without recomputing.
"""

from __future__ import annotations

import argparse
import json

from hetcomp_dist.config import load_config

HELP = "Build knowledge round 0 (P+, E1 targets) or one DKC round from a student's embeddings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="RUN folder or URI with committed data and teachers")
    p.add_argument("--config", help="YAML config (default: the paper's values)")
    p.add_argument("--round", type=int, default=0, help="0 = initial knowledge; r >= 1 = DKC round r")
    p.add_argument("--epoch", type=int, help="student epoch of the DKC round (sets the decayed threshold)")
    p.add_argument("--emb", help=".npz with float arrays `user` (n_users, d) and `item` (n_items, d)")
    p.add_argument(
        "--metric", default="ip", choices=("ip", "l2"), help="student score: dot product or -distance^2"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. knowledge.move_rule=paper"
    )


def run(args: argparse.Namespace) -> int:
    from hetcomp_dist.errors import InputError
    from hetcomp_dist.knowledge.rounds import build_round0, dkc_round
    from hetcomp_dist.lease import RunLease

    cfg = load_config(args.config, list(args.overrides), run=args.run)
    if args.round == 0:
        manifest = build_round0(cfg.run, cfg)
    else:
        if args.emb is None or args.epoch is None:
            raise InputError(
                "--round", "a DKC round needs --emb and --epoch", "pass the student's embeddings and epoch"
            )
        with RunLease(cfg.run, cfg.pipeline):  # dkc_round takes none: inside a training the driver holds it
            manifest = dkc_round(cfg.run, cfg, args.round, args.epoch, args.emb, args.metric)
    keep = ("round", "epoch", "teachers", "means", "switch", "changed_users", "wall_s", "peak_rss_gib")
    print(json.dumps({k: manifest[k] for k in keep if k in manifest}))
    return 0
