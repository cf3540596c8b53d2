"""Benchmark: FAISS evaluation vs a brute-force torch top-K, 1M synthetic users x 100k items, dim 6.

    python jobs/bench_evaluate.py [--run DIR] [--users 1000000] [--items 100000] [--dim 6]
                                  [--faiss-users N] [--bruteforce-users 50000] [--threads 2] [--repeats 1]

Setup (untimed): the synthetic run (`synthesize`, reused when DIR already holds it) and random
dimension-6 user/item embeddings (seed 0). Then, each in its own child process so that each reports
its own peak memory, over the first N users of the run, both protocols (valid excludes train ∪ test,
test excludes train ∪ valid), K = 50:

- faiss: `evaluate_embeddings(..., users=(0, N))` -- the package's evaluation (exact flat FAISS index,
  one candidate search per user serving both protocols, users grouped by exclusion size);
- bruteforce: a plain torch loop written here -- (B, n_items) scores, the protocol's exclusion set
  to -inf, torch.topk(50), per protocol -- over the first --bruteforce-users users (a subsample:
  it is slower; the rate is per user, so it compares), metrics through the same `recall_ndcg`.

Both paths' metrics over the common users are checked equal (1e-6). Timings include reading the
shards. The machine is shared: the rates are noisy; --repeats gives medians. Besides the wall rates
(users/s) the JSON has users per CPU-second of each process (all its threads), which an
oversubscribed machine distorts less; with T threads the uncontended wall rate is at most T times it.
Ends with ONE JSON line: faiss_users_per_s, bruteforce_users_per_s, peak_rss_gib and the details.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install

import numpy as np  # noqa: E402

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import DataConfig, EvalConfig, SynthConfig  # noqa: E402
from hetcomp_dist.progress import log, peak_rss_gib  # noqa: E402

STAGE = "bench_evaluate"
K = 50


def embeddings(n_users: int, n_items: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n_users, dim), dtype=np.float32),
            rng.standard_normal((n_items, dim), dtype=np.float32))


def setup(args) -> dict:
    from hetcomp_dist.data.synth import synthesize

    t = time.perf_counter()
    m = synthesize(args.run, SynthConfig(users=args.users, items=args.items, seed=0), DataConfig(seed=0))
    log(STAGE, f"setup: run {args.run} ready in {time.perf_counter() - t:.1f}s (untimed)")
    return m


# ------------------------------------------------------------------------------------ the two paths
def run_faiss(args, m: dict) -> dict:
    import faiss

    from hetcomp_dist.evaluation.evaluate import evaluate_embeddings

    faiss.omp_set_num_threads(args.threads)
    U, V = embeddings(m["n_users"], m["n_items"], args.dim)
    rss0 = peak_rss_gib()
    t, c = time.perf_counter(), time.process_time()
    res = evaluate_embeddings(args.run, U, V, "ip", EvalConfig(), users=(0, args.n))
    return _rates(args.n, t, c, {s: res[s] for s in ("valid", "test")}, rss0)


def _rates(n: int, t: float, c: float, metrics: dict, rss0: float) -> dict:
    """Wall rate, and CPU rate (users per CPU-second of this process, all threads): on a shared,
    oversubscribed machine the wall rate measures the neighbours; the CPU rate less so."""
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"users_per_s": n / wall, "users_per_cpu_s": n / cpu, "wall_s": wall, "cpu_s": cpu, "metrics": metrics,
            "peak_rss_gib": peak_rss_gib(), "rss_before_gib": rss0}


def run_bruteforce(args, m: dict) -> dict:
    import torch

    from hetcomp_dist.data.dataset import load_shard
    from hetcomp_dist.evaluation.metrics import MetricSums, recall_ndcg

    torch.set_num_threads(args.threads)
    U, V = embeddings(m["n_users"], m["n_items"], args.dim)
    Vt = torch.from_numpy(V).T.contiguous()
    sums = {s: MetricSums((10, 50)) for s in ("valid", "test")}
    rss0 = peak_rss_gib()
    t, c = time.perf_counter(), time.process_time()
    batch = 1024
    for s, lo, hi in storage.iter_shards("", m["n_users"], m["shard_size"]):
        if lo >= args.n:
            break
        hi = min(hi, args.n)
        parts = {name: load_shard(args.run, name, s, m).rows(0, hi - lo) for name in ("train", "valid", "test")}
        for b0 in range(0, hi - lo, batch):
            b1 = min(b0 + batch, hi - lo)
            sub = {name: c.rows(b0, b1) for name, c in parts.items()}
            scores = torch.from_numpy(U[lo + b0: lo + b1]) @ Vt  # (B, n_items)
            ev = (sub["valid"].lengths() > 0) & (sub["test"].lengths() > 0)
            for split, other in (("valid", "test"), ("test", "valid")):
                sc = scores.clone()
                for ex in (sub["train"], sub[other]):
                    rows = torch.from_numpy(np.repeat(np.arange(b1 - b0), ex.lengths()))
                    sc[rows, torch.from_numpy(ex.items.astype(np.int64))] = float("-inf")
                top = torch.topk(sc, K, dim=1).indices.to(torch.int32).numpy()
                gt = sub[split].take(np.nonzero(ev)[0])
                sums[split].add(recall_ndcg(top[ev], gt.offsets, gt.items, (10, 50), m["n_items"]))
    return _rates(args.n, t, c, {s: sums[s].means() for s in sums}, rss0)


def child(args) -> None:
    from hetcomp_dist.data.dataset import load_manifest

    m = load_manifest(args.run)
    out = run_faiss(args, m) if args.child == "faiss" else run_bruteforce(args, m)
    print("RESULT " + json.dumps(out), flush=True)


def spawn(path: str, args, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--run", args.run, "--n", str(n),
           "--dim", str(args.dim), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "hetcomp-bench-1m"))
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=6)
    p.add_argument("--faiss-users", type=int, default=0, help="users evaluated by FAISS (0 = all)")
    p.add_argument("--bruteforce-users", type=int, default=50_000, help="users of the brute-force subsample")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", choices=("faiss", "bruteforce"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    m = setup(args)
    n_f = args.faiss_users or m["n_users"]
    n_b = min(args.bruteforce_users, n_f)
    runs = {"faiss": [], "bruteforce": [], "faiss_common": None}
    # the same users through both paths first: the metrics must agree
    runs["faiss_common"] = spawn("faiss", args, n_b)
    for _ in range(args.repeats):
        runs["bruteforce"].append(spawn("bruteforce", args, n_b))
        r = runs["bruteforce"][-1]
        log(STAGE, f"bruteforce: {r['users_per_s']:,.0f} users/s ({r['users_per_cpu_s']:,.0f} per CPU-s) over {n_b:,} users")
        runs["faiss"].append(spawn("faiss", args, n_f))
        r = runs["faiss"][-1]
        log(STAGE, f"faiss: {r['users_per_s']:,.0f} users/s ({r['users_per_cpu_s']:,.0f} per CPU-s) over {n_f:,} users")
    a, b = runs["faiss_common"]["metrics"], runs["bruteforce"][0]["metrics"]
    diff = max(abs(a[s][k] - b[s][k]) for s in a for k in a[s])
    med = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
    figures = {
        "faiss_users_per_s": round(med("faiss", "users_per_s"), 1),
        "bruteforce_users_per_s": round(med("bruteforce", "users_per_s"), 1),
        "faiss_users_per_cpu_s": round(med("faiss", "users_per_cpu_s"), 1),
        "bruteforce_users_per_cpu_s": round(med("bruteforce", "users_per_cpu_s"), 1),
        "faiss_users": n_f, "bruteforce_users": n_b, "bruteforce_subsample": n_b < m["n_users"],
        "faiss_peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs["faiss"]), 3),
        "bruteforce_peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs["bruteforce"]), 3),
        "n_users": m["n_users"], "n_items": m["n_items"], "dim": args.dim, "k": K, "threads": args.threads,
        "repeats": args.repeats, "metrics_max_abs_diff": diff, "metrics_agree_1e-6": diff <= 1e-6,
        "faiss_metrics_first_users": runs["faiss"][0]["metrics"], "load_avg_1m": os.getloadavg()[0],
    }
    figures["peak_rss_gib"] = max(figures["faiss_peak_rss_gib"], figures["bruteforce_peak_rss_gib"])
    figures["speedup"] = round(figures["faiss_users_per_s"] / figures["bruteforce_users_per_s"], 2)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
