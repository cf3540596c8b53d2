"""Benchmark: the six teachers on CiteULike, trained concurrently by Ray actors on this machine.

    python jobs/bench_teachers.py [--input users.dat] [--run DIR] [--config FILE] [--fresh] [key=value ...]

1. ingests CiteULike (METHOD.md §1) into RUN/data (skipped when committed);
2. `train_teachers` -- one actor per teacher, all six at once, early stopping on valid R@50;
3. `ensemble_report` -- the ensemble g of the E4 rankings under the same protocol.

Prints a table of each teacher's and the ensemble's test R@10/N@10/R@50/N@50 (valid R@50 beside it,
the only figure the settings below were chosen on), wall time, peak memory per process, and ends
with ONE JSON line. The JSON's `targets` checks the best single teacher's test R@50 (>= 0.27), the
ensemble's (>= 0.30) and the stage's wall time (<= 1,500 s).

Per-teacher settings come from `hetcomp_dist/configs/citeulike.yaml` (the file `hetcomp-dist run`
uses for CiteULike; overridable with key=value). They were chosen on **validation** R@50 only: training
speed and regularisation (learning rate, batch size, negatives, L2, epochs per evaluation); the models
are METHOD.md §2's.
"""

from __future__ import annotations

import argparse
import json
import os
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

STAGE = "bench_teachers"
CITEULIKE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "data",
    "citeulike",
    "users.dat",
)

# the CiteULike settings, chosen on validation R@50 only (see the file's comments)
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hetcomp_dist", "configs", "citeulike.yaml"
)
KEYS = ("R@10", "N@10", "R@50", "N@50")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=os.path.normpath(CITEULIKE), help="CiteULike users.dat")
    ap.add_argument("--run", default="/tmp/hetcomp-bench-teachers", help="RUN folder (data + teachers)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config applied before the overrides")
    ap.add_argument("--fresh", action="store_true", help="delete RUN/teachers first (retrain everything)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()

    import ray

    from hetcomp_dist.config import DataConfig
    from hetcomp_dist.data.ingest import ingest
    from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.teachers.actors import train_teachers

    cfg = load_config(args.config, [f"run={args.run}", *args.overrides])
    layout = RunLayout(cfg.run)
    t0 = time.perf_counter()
    data = ingest(cfg.run, DataConfig(**{**cfg.data.__dict__, "input": args.input, "format": "citeulike"}))
    ingest_s = time.perf_counter() - t0
    if args.fresh:
        storage.delete_dir(layout.teachers)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    t1 = time.perf_counter()
    summary = train_teachers(cfg.run, cfg)
    teachers_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    report = ensemble_report(cfg.run, cfg)
    ensemble_s = time.perf_counter() - t2
    ray.shutdown()

    metrics = {n: storage.read_json(layout.teacher_metrics(n)) for n in cfg.teachers.names}
    head = (
        f"{'model':<9}"
        + "".join(f"{'test ' + k:>10}" for k in KEYS)
        + f"{'valid R@50':>11}{'C':>5}{'wall s':>8}{'cpu s':>7}{'peak GiB':>9}"
    )
    lines = [head, "-" * len(head)]
    for n in cfg.teachers.names:
        m, r = metrics[n], report["teachers"][n]
        lines.append(
            f"{n:<9}"
            + "".join(f"{r['test'][k]:>10.4f}" for k in KEYS)
            + f"{r['valid']['R@50']:>11.4f}{m['convergence_epoch']:>5}{m['wall_s']:>8.0f}"
            f"{m.get('cpu_s', 0):>7.0f}{m['peak_rss_gib']:>9.2f}"
        )
    e = report["ensemble"]
    lines.append(
        f"{'ensemble':<9}" + "".join(f"{e['test'][k]:>10.4f}" for k in KEYS) + f"{e['valid']['R@50']:>11.4f}"
    )
    print("\n".join(lines))
    best = max(cfg.teachers.names, key=lambda n: report["teachers"][n]["valid"]["R@50"])  # picked on valid
    best_test = max(report["teachers"][n]["test"]["R@50"] for n in cfg.teachers.names)
    print(
        f"data: {data['n_users']} users, {data['n_items']} items, {data['n_train']} train pairs; "
        f"teachers wall {teachers_s:.0f}s "
        f"({'trained ' + ','.join(summary['trained']) if summary['trained'] else 'all cached'}), "
        f"ensemble {ensemble_s:.1f}s, driver peak {peak_rss_gib():.2f} GiB"
    )
    out = {
        "bench": "teachers",
        "dataset": "citeulike",
        "n_users": data["n_users"],
        "n_items": data["n_items"],
        "teachers_wall_s": round(teachers_s, 1),
        "ingest_s": round(ingest_s, 1),
        "ensemble_s": round(ensemble_s, 1),
        "trained": summary["trained"],
        "best_valid_teacher": best,
        "best_single_test_R@50": best_test,
        "ensemble_test_R@50": e["test"]["R@50"],
        "targets": {
            "best_single_test_R@50>=0.27": best_test >= 0.27,
            "ensemble_test_R@50>=0.30": e["test"]["R@50"] >= 0.30,
            "wall<=1500s": teachers_s <= 1500,
        },
        "teachers": {
            n: {
                "test": report["teachers"][n]["test"],
                "valid_R@50": report["teachers"][n]["valid"]["R@50"],
                "convergence_epoch": metrics[n]["convergence_epoch"],
                "epochs": metrics[n]["epochs"],
                "state_epochs": metrics[n]["state_epochs"],
                "wall_s": round(metrics[n]["wall_s"], 1),
                "cpu_s": round(metrics[n].get("cpu_s", 0.0), 1),
                "peak_rss_gib": round(metrics[n]["peak_rss_gib"], 3),
            }
            for n in cfg.teachers.names
        },
        "ensemble": e,
        "driver_peak_rss_gib": round(peak_rss_gib(), 3),
        "config": args.config,
        "settings": list(args.overrides),
    }
    log(STAGE, "done")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
