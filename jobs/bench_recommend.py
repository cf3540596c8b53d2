"""Benchmark of ``recommend``: every user's top-100 from a dimension-6 student, 1M users x 100k items.

    python jobs/bench_recommend.py [--workdir DIR] [--users 1000000] [--items 100000] [--dim 6] [--k 100]
                                   [--repeats 1] [--skip-ray] [--skip-inprocess]

Setup (untimed, reused when DIR holds it): the synthetic run (`synthesize`) and a finished
``hetcomp-mf`` student whose vectors are student-like (`testing.embeddings.popularity_embeddings`:
item norms grow with popularity). Then the package's `recommend` for every user, K = 100, every seen
item excluded, exact (the default index), each path in its own process so that its peak RSS is its own:

- inprocess: ``distributed=False``, this process reads every shard and writes the output;
- ray: ``distributed=True``, a Ray Data actor pool (one FAISS index per actor) over the shards; each
  actor reports its peak RSS.

Both outputs are checked identical. Wall time = the `recommend` call (reading the shards, searching,
writing Parquet), Ray's start-up excluded. Ends with ONE JSON line: users_per_s_inprocess,
users_per_s_ray, peak_rss_gib (the largest process) and the details.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

STAGE = "bench_recommend"


def setup(args) -> str:
    from hetcomp_dist import storage
    from hetcomp_dist.config import DataConfig, SynthConfig
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.progress import log
    from hetcomp_dist.testing.embeddings import popularity_embeddings
    from hetcomp_dist.testing.students import write_student

    run = os.path.join(args.workdir, f"run-{args.users}x{args.items}")
    t = time.perf_counter()
    m = synthesize(run, SynthConfig(users=args.users, items=args.items, seed=0), DataConfig(seed=0))
    layout = RunLayout(run)
    if storage.read_manifest(layout.student("hetcomp", "mf")) is None:
        user, item = popularity_embeddings(run, m, args.dim, seed=0)
        write_student(run, "hetcomp-mf", user, item, "ip", tag=f"bench-d{args.dim}")
    log(STAGE, f"setup: {run} ready in {time.perf_counter() - t:.1f}s (untimed)")
    return run


def child(args) -> None:
    """One timed `recommend` (--child inprocess|ray); prints one JSON line."""
    from hetcomp_dist.config import load_config
    from hetcomp_dist.progress import peak_rss_gib
    from hetcomp_dist.serving.recommend import Request, recommend

    run = args.run
    out = os.path.join(args.workdir, f"out-{args.child}")
    distributed = args.child == "ray"
    if distributed:
        import ray

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = load_config(None, [], run=run)
    from hetcomp_dist import storage

    storage.delete_dir(out)  # a timed run, never a skip
    t = time.perf_counter()
    m = recommend(run, cfg, Request(k=args.k, out=out, distributed=distributed))
    wall = time.perf_counter() - t
    print(
        json.dumps(
            {
                "wall_s": wall,
                "users": m["n_users"],
                "users_per_s": m["n_users"] / wall,
                "driver_peak_rss_gib": peak_rss_gib(),
                "worker_peak_rss_gib": m.get("worker_peak_rss_gib", 0.0),
                "out": out,
            }
        ),
        flush=True,
    )


def run_child(args, kind: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--run",
        args.run,
        "--workdir",
        args.workdir,
    ]
    cmd += ["--k", str(args.k), "--cpus", str(args.cpus)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(res.stderr[-3000:])
    if res.returncode:
        raise SystemExit(f"{kind} failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_recommend"))
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=6)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--cpus", type=int, default=2, help="Ray CPUs (actors) for the ray path")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--child", choices=("inprocess", "ray"), help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    args.run = setup(args)
    kinds = [k for k, skip in (("inprocess", args.skip_inprocess), ("ray", args.skip_ray)) if not skip]
    runs = {k: [run_child(args, k) for _ in range(args.repeats)] for k in kinds}
    if len(kinds) == 2:
        from hetcomp_dist.serving.recommend import read_recommendations

        a = read_recommendations(runs["inprocess"][-1]["out"])
        b = read_recommendations(runs["ray"][-1]["out"])
        if not a.equals(b):
            raise SystemExit("the in-process and Ray outputs differ")
    med = {k: statistics.median(r["users_per_s"] for r in v) for k, v in runs.items()}
    peak = max(max(r["driver_peak_rss_gib"], r["worker_peak_rss_gib"]) for v in runs.values() for r in v)
    print(
        json.dumps(
            {
                "users_per_s_inprocess": round(med.get("inprocess", 0.0), 1),
                "users_per_s_ray": round(med.get("ray", 0.0), 1),
                "peak_rss_gib": round(peak, 3),
                "users": args.users,
                "items": args.items,
                "dim": args.dim,
                "k": args.k,
                "repeats": args.repeats,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
