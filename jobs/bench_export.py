"""Benchmark: trajectory export at 1M users -- users/second and memory per process.

    python jobs/bench_export.py [--users 200000,1000000] [--items 20000] [--workdir DIR] [--keep]

For each size: a synthetic run (`synthesize`), then two cheap teachers (MF and ML) trained for two
epochs by their Ray actors (`train_teachers`, one actor each, one CPU each), then their trajectory
export (states E1..E4 from snapshots at epochs 1 and 2, top-100 per user, shards of 50k users, plus the
E4 observed order) with metrics per state. From each teacher's metrics.json: export users/s and the
actor's resident memory at the start of each export and at its maximum (sampled after every block).
"Bounded" means the export adds the same memory at every size (one shard's lists, the index, score
blocks), while the model itself (user table) grows with users.

Ends with ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import load_config  # noqa: E402
from hetcomp_dist.progress import log, peak_rss_gib  # noqa: E402

STAGE = "bench_export"
NAMES = ("mf", "ml")


def settings(run: str, users: int) -> list[str]:
    """Few, large steps: 2 epochs, evaluation at epoch 2, a snapshot every epoch (E1..E4 = 1,1,2,2)."""
    batch = max(1024, users // 16)
    return [
        f"run={run}",
        f"teachers.names={list(NAMES)}",
        "teachers.max_epochs=2",
        "teachers.eval_every=2",
        "teachers.snapshot_every=1",
        "teachers.num_cpus=1",
        f"teachers.batch_size={batch}",
        "teachers.mf.lr=0.01",
        "teachers.ml.lr=0.01",
        "data.shard_size=50000",
    ]


def one_size(workdir: str, users: int, items: int) -> dict:
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.teachers.actors import train_teachers

    run = os.path.join(workdir, f"export-{users}")
    layout = RunLayout(run)
    cfg = load_config(
        None,
        settings(run, users) + [f"synth.users={users}", f"synth.items={items}", "synth.mean_interactions=10"],
    )
    t0 = time.perf_counter()
    data = synthesize(run, cfg.synth, cfg.data)
    synth_s = time.perf_counter() - t0
    storage.delete_dir(layout.teachers)
    t1 = time.perf_counter()
    train_teachers(run, cfg)
    wall = time.perf_counter() - t1
    out = {
        "users": users,
        "items": items,
        "train_pairs": data["n_train"],
        "synth_s": round(synth_s, 1),
        "teachers_wall_s": round(wall, 1),
        "teachers": {},
    }
    for n in NAMES:
        m = storage.read_json(layout.teacher_metrics(n))
        exports = {}
        for st in m["states"]:  # states sharing an epoch share one export
            exports[st["epoch"]] = st["export"]
        ex = list(exports.values())
        out["teachers"][n] = {
            "export_users_per_s": round(statistics.median(e["users_per_s"] for e in ex), 1),
            "export_rss_start_gib": round(max(e["rss_start_gib"] for e in ex), 3),
            "export_rss_max_gib": round(max(e["rss_max_gib"] for e in ex), 3),
            "export_extra_gib": round(max(e["rss_max_gib"] - e["rss_start_gib"] for e in ex), 3),
            "peak_rss_gib": round(m["peak_rss_gib"], 3),
            "model_gib": round(m["model_gib"], 3),
            "export_s": round(m["export_s"], 1),
            "train_s": round(m["train_s"], 1),
            "eval_s": round(m["eval_s"], 1),
            "test_R@50": m["states"][-1]["test"]["R@50"],
        }
        log(STAGE, f"{users:,} users, {n}: {out['teachers'][n]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="200000,1000000", help="comma-separated user counts")
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--workdir", default="/tmp/hetcomp-bench-export")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic runs")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    sizes = [int(x) for x in args.users.split(",")]
    results = [one_size(args.workdir, u, args.items) for u in sizes]
    ray.shutdown()
    head = (
        f"{'users':>9} {'teacher':<5}{'users/s':>10}{'model GiB':>10}{'rss@export':>11}"
        f"{'max':>7}{'extra':>7}{'peak':>7}"
    )
    print(head)
    for r in results:
        for n, t in r["teachers"].items():
            print(
                f"{r['users']:>9} {n:<5}{t['export_users_per_s']:>10.0f}{t['model_gib']:>10.3f}"
                f"{t['export_rss_start_gib']:>11.3f}{t['export_rss_max_gib']:>7.3f}{t['export_extra_gib']:>7.3f}"
                f"{t['peak_rss_gib']:>7.3f}"
            )
    small, large = results[0], results[-1]
    growth = {
        n: round(large["teachers"][n]["export_extra_gib"] - small["teachers"][n]["export_extra_gib"], 3)
        for n in NAMES
    }
    out = {
        "bench": "export",
        "sizes": sizes,
        "results": results,
        "export_users_per_s_largest": {n: large["teachers"][n]["export_users_per_s"] for n in NAMES},
        "export_extra_gib_growth_small_to_large": growth,
        "driver_peak_rss_gib": round(peak_rss_gib(), 3),
    }
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
