"""Check: knowledge rounds on a run with real teacher trajectories, in-process vs Ray Data.

    python jobs/check_knowledge_rounds.py --run RUN --embeddings EMB.npz [--config FILE] [--workdir DIR]

RUN must hold committed data and teachers (e.g. the CiteULike pipeline's run); EMB.npz is a student's
embeddings (`user`, `item`), e.g. RUN/student/hetcomp-mf/emb.npz. Two scratch runs under --workdir
link RUN's data and teachers (read only) and build the same rounds, one in-process and one as a Ray
Data map over the user shards (`knowledge.distributed_min_users` = 0):

- round 0: P+ and the E1 targets;
- round 1 at epoch 10: the first DKC call, from the student's embeddings perturbed as one period
  earlier (`hetcomp_dist.testing.trajectories.perturb_embeddings`);
- round 2 at epoch 20: a DKC call with moves, from the student's embeddings.

Prints, per round, each teacher's state mean, the switch decision, moved users per teacher and users
changed on both paths, checks that the manifests' decisions and every output shard (v, d, targets,
P+) are identical, and ends with one JSON line (`match`: true when everything agrees). Exit 0 on a
match, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import load_config  # noqa: E402
from hetcomp_dist.errors import InputError  # noqa: E402
from hetcomp_dist.knowledge import rounds  # noqa: E402
from hetcomp_dist.layout import RunLayout  # noqa: E402
from hetcomp_dist.progress import log  # noqa: E402
from hetcomp_dist.testing.trajectories import perturb_embeddings  # noqa: E402

STAGE = "check_knowledge_rounds"
DECISIONS = ("means", "switch", "moved", "changed_users")


def scratch_run(src: str, dest: str) -> str:
    """A run folder whose data and teachers are links to `src`'s (rounds are written only under dest)."""
    os.makedirs(dest)
    for part in ("data", "teachers"):
        os.symlink(os.path.abspath(RunLayout(src).stage(part)), RunLayout(dest).stage(part))
    return dest


def build_rounds(run: str, cfg, emb_early: str, emb: str) -> list[dict]:
    return [
        rounds.build_round0(run, cfg),
        rounds.dkc_round(run, cfg, 1, 10, emb_early),
        rounds.dkc_round(run, cfg, 2, 20, emb),
    ]


def same_files(a: str, b: str) -> list[str]:
    """Names of the parquet shards under a and b that differ (or exist on one side only)."""
    fa, fb = sorted(storage.list_files(a, ".parquet")), sorted(storage.list_files(b, ".parquet"))
    if [os.path.basename(f) for f in fa] != [os.path.basename(f) for f in fb]:
        return [f"{a}: shard lists differ"]
    return [x for x, y in zip(fa, fb) if not same_table(pq.read_table(x), pq.read_table(y))]


def same_table(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and values, NaN equal to NaN (d is NaN before the first DKC call)."""
    if not a.schema.equals(b.schema) or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        x, y = a[name].combine_chunks(), b[name].combine_chunks()
        if pa.types.is_list(x.type):
            if not np.array_equal(x.offsets.to_numpy(), y.offsets.to_numpy()):
                return False
            x, y = x.flatten(), y.flatten()
        if not np.array_equal(
            x.to_numpy(zero_copy_only=False),
            y.to_numpy(zero_copy_only=False),
            equal_nan=pa.types.is_floating(x.type),
        ):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a local RUN with committed data and teachers")
    ap.add_argument("--embeddings", required=True, help="student embeddings .npz (user, item)")
    ap.add_argument("--config", help="the run's YAML config (its knowledge section is used)")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one, deleted afterwards)")
    args = ap.parse_args()
    for part in ("data", "teachers"):
        folder = RunLayout(args.run).stage(part)
        if storage.read_manifest(folder) is None:
            raise InputError(folder, "not committed", "run the data and teachers stages first")
    work = args.workdir or tempfile.mkdtemp(prefix="check-rounds-")
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    try:
        emb_early = os.path.join(work, "emb-epoch10.npz")
        perturb_embeddings(args.embeddings, emb_early, scale=0.3, seed=0)
        base = load_config(args.config)
        out = {}
        for path, min_users in (("inprocess", 10**15), ("raydata", 0)):
            run = scratch_run(args.run, os.path.join(work, path))
            cfg = dataclasses.replace(
                base, run=run, knowledge=dataclasses.replace(base.knowledge, distributed_min_users=min_users)
            )
            out[path] = build_rounds(run, cfg, emb_early, args.embeddings)
            log(STAGE, f"{path}: rounds built ({[m['distributed'] for m in out[path]]} distributed)")
        a, b = out["inprocess"], out["raydata"]
        diffs = []
        inprocess, raydata = (
            RunLayout(os.path.join(work, "inprocess")),
            RunLayout(os.path.join(work, "raydata")),
        )
        for r, (ma, mb) in enumerate(zip(a, b)):
            if not (ma["distributed"] is False and mb["distributed"] is True):
                diffs.append(f"round {r}: the paths were not in-process vs Ray Data")
            diffs += [f"round {r}: {k} {ma[k]} != {mb[k]}" for k in DECISIONS if ma[k] != mb[k]]
            diffs += same_files(inprocess.round(r), raydata.round(r))
        diffs += same_files(inprocess.pos, raydata.pos)
        names = a[0]["teachers"]
        print(
            f"{'round':<7}{'epoch':>6}  " + "".join(f"{n:>7}" for n in names) + f"{'switch':>8}{'changed':>9}"
            "  moved per teacher"
        )
        for ma in a:
            print(
                f"{ma['round']:<7}{ma['epoch']:>6}  "
                + "".join(f"{ma['means'][n]:>7.3f}" for n in names)
                + f"{str(ma['switch']):>8}{ma['changed_users']:>9}  "
                + " ".join(f"{n}={ma['moved'].get(n, 0)}" for n in names)
            )
        print(
            "in-process and Ray Data: "
            + ("identical decisions and shards" if not diffs else "; ".join(diffs))
        )
        print(
            json.dumps(
                {
                    "check": "knowledge_rounds",
                    "run": args.run,
                    "n_users": a[0]["n_users"],
                    "n_shards": a[0]["n_shards"],
                    "match": not diffs,
                    "differences": diffs,
                    "rounds": [{k: ma[k] for k in ("round", "epoch", *DECISIONS)} for ma in a],
                    "wall_s": {p: [round(m["wall_s"], 2) for m in out[p]] for p in out},
                }
            )
        )
        return 0 if not diffs else 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
