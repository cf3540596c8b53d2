"""Benchmark: FAISS evaluation vs a brute-force torch top-K, 1M users x 100k items, dim 6, K = 50.

    python jobs/bench_evaluate.py [--run DIR] [--users 1000000] [--items 100000] [--dim 6]
                                  [--emb gaussian|popnorm] [--faiss-users N] [--pruned-users N]
                                  [--bruteforce-users 50000] [--threads 2] [--repeats 1]

Setup (untimed): the synthetic run (`synthesize`, reused when DIR already holds it) and dimension-6
user/item embeddings (seed 0), either

- ``gaussian``: i.i.d. standard normal users and items (the hard case for norm pruning: item norms
  carry no signal), or
- ``popnorm``: like trained embeddings, item norms grow with popularity -- item = random unit
  direction x (0.1 + log(1 + train count)); user = sum of its train items' vectors + N(0, 0.1^2)
  noise (cached next to the run as ``DIR-emb-popnorm-d<dim>.npz``).

Then, over the first N users of the run, both protocols (valid excludes train ∪ test, test excludes
train ∪ valid), K = 50, the paths side by side:

- faiss: `evaluate_embeddings(..., users=(lo, hi))` with the default ``EvalConfig()`` -- exact FAISS
  flat index, one candidate search of K + |train ∪ valid ∪ test| per user serving both protocols;
- faiss_blocked: the same call with ``EvalConfig(index="blocked")`` -- FAISS flat indexes over
  norm-sorted item blocks, each user stopping once no unvisited item can enter its lists (exact:
  float64 order, ties by id); reports the share of the users x items scores FAISS computed (``scanned``);
- pruned: ``EvalConfig(index="pruned")`` -- the exact norm-pruned torch scan (`retrieval.PrunedIndex`);
- bruteforce: a plain torch loop written here -- (B, n_items) scores, the protocol's exclusion set
  to -inf, torch.topk(50), per protocol -- over the first --bruteforce-users users (a subsample:
  it is slower; the rate is per user, so it compares), metrics through the same `recall_ndcg`.

Every path runs as --threads worker processes over equal user slices, one thread each (FAISS, torch),
like the Ray path's one task per CPU: two OpenMP threads in one process spin-wait on a small shared
host. Wall = first start to last end of the workers' timed calls (process start-up, embedding set-up
and one untimed 64-user call that loads the compiled kernels -- ``*_warmup_s`` in the JSON --
excluded); each worker reports its own peak RSS.
All paths' metrics over the brute-force users are checked equal (1e-6). Timings include reading the
shards. The machine is shared: the rates are noisy; --repeats gives medians. Besides the wall rates
(users/s) the JSON has users per CPU-second (all workers), which an oversubscribed machine distorts
less; with T workers the uncontended wall rate is at most T times it.
Ends with ONE JSON line: faiss_users_per_s, faiss_blocked_users_per_s, pruned_users_per_s,
bruteforce_users_per_s, peak_rss_gib and the details.
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

import numpy as np  # noqa: E402

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import DataConfig, EvalConfig, SynthConfig  # noqa: E402
from hetcomp_dist.progress import log, peak_rss_gib  # noqa: E402

STAGE = "bench_evaluate"
K = 50
PATHS = ("bruteforce", "faiss", "faiss_blocked", "pruned")
INDEX = {"faiss": "flat", "faiss_blocked": "blocked", "pruned": "pruned"}  # EvalConfig.index per path


def embeddings(args, m: dict) -> tuple[np.ndarray, np.ndarray]:
    """(users (n_users, dim), items (n_items, dim)) float32 of kind --emb (see the module docstring)."""
    n_users, n_items, dim = m["n_users"], m["n_items"], args.dim
    rng = np.random.default_rng(0)
    if args.emb == "gaussian":
        return (
            rng.standard_normal((n_users, dim), dtype=np.float32),
            rng.standard_normal((n_items, dim), dtype=np.float32),
        )
    path = f"{args.run.rstrip('/')}-emb-{args.emb}-d{dim}.npz"
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            return z["user"], z["item"]
    from hetcomp_dist.testing.embeddings import popularity_embeddings

    U, V = popularity_embeddings(args.run, m, dim, seed=0)
    tmp = path + ".tmp.npz"
    np.savez(tmp, user=U, item=V)
    os.replace(tmp, path)
    return U, V


def setup(args) -> dict:
    from hetcomp_dist.data.synth import synthesize

    t = time.perf_counter()
    m = synthesize(args.run, SynthConfig(users=args.users, items=args.items, seed=0), DataConfig(seed=0))
    log(STAGE, f"setup: run {args.run} ready in {time.perf_counter() - t:.1f}s (untimed)")
    return m


# ------------------------------------------------------------------------- one worker: users [lo, hi)
def run_package(args, m: dict) -> dict:
    """The package's evaluation of users [lo, hi) with EvalConfig(index=INDEX[path])."""
    from hetcomp_dist.evaluation import evaluate

    U, V = embeddings(args, m)
    cfg = EvalConfig(index=INDEX[args.child])
    t = time.perf_counter()
    evaluate.evaluate_embeddings(args.run, U, V, "ip", cfg, users=(args.lo, min(args.lo + 64, args.hi)))
    warmup = time.perf_counter() - t  # once per process: loading the compiled kernels, first FAISS calls
    built = []
    build = evaluate.index_for
    evaluate.index_for = lambda *a, **kw: built.append(build(*a, **kw)) or built[-1]  # to read .scanned
    t0, t, c = time.time(), time.perf_counter(), time.process_time()
    res = evaluate.evaluate_embeddings(args.run, U, V, "ip", cfg, users=(args.lo, args.hi))
    out = _rates(args.hi - args.lo, t, c, res["sums"])
    out.update(t0=t0, t1=time.time(), scanned=sum(getattr(ix, "scanned", 0) for ix in built), warmup_s=warmup)
    return out


def run_bruteforce(args, m: dict) -> dict:
    """(B, n_items) torch scores per batch of users [lo, hi), exclusion to -inf, topk, per protocol."""
    import torch

    from hetcomp_dist.data.dataset import load_shard
    from hetcomp_dist.evaluation.metrics import MetricSums, recall_ndcg

    U, V = embeddings(args, m)
    Vt = torch.from_numpy(V).T.contiguous()
    sums = {s: MetricSums((10, 50)) for s in ("valid", "test")}
    t0, t, c = time.time(), time.perf_counter(), time.process_time()
    batch = 1024
    for s, lo, hi in storage.iter_shards("", m["n_users"], m["shard_size"]):
        a, b = max(lo, args.lo), min(hi, args.hi)
        if a >= b:
            continue
        parts = {
            name: load_shard(args.run, name, s, m).rows(a - lo, b - lo) for name in ("train", "valid", "test")
        }
        for b0 in range(0, b - a, batch):
            b1 = min(b0 + batch, b - a)
            sub = {name: part.rows(b0, b1) for name, part in parts.items()}
            scores = torch.from_numpy(U[a + b0 : a + b1]) @ Vt  # (B, n_items)
            ev = (sub["valid"].lengths() > 0) & (sub["test"].lengths() > 0)
            for split, other in (("valid", "test"), ("test", "valid")):
                sc = scores.clone()
                for ex in (sub["train"], sub[other]):
                    rows = torch.from_numpy(np.repeat(np.arange(b1 - b0), ex.lengths()))
                    sc[rows, torch.from_numpy(ex.items.astype(np.int64))] = float("-inf")
                top = torch.topk(sc, K, dim=1).indices.to(torch.int32).numpy()
                gt = sub[split].take(np.nonzero(ev)[0])
                sums[split].add(recall_ndcg(top[ev], gt.offsets, gt.items, (10, 50), m["n_items"]))
    out = _rates(args.hi - args.lo, t, c, {s: sums[s].to_state() for s in sums})
    out.update(t0=t0, t1=time.time(), scanned=0, warmup_s=0.0)
    return out


def _rates(n: int, t: float, c: float, sums: dict) -> dict:
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"wall_s": wall, "cpu_s": cpu, "n": n, "sums": sums, "peak_rss_gib": peak_rss_gib()}


def child(args) -> None:
    import faiss
    import torch

    from hetcomp_dist.data.dataset import load_manifest

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    m = load_manifest(args.run)
    out = (run_bruteforce if args.child == "bruteforce" else run_package)(args, m)
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------- the driver
def _result(stdout: str, rc: int) -> dict:
    if rc != 0:
        raise RuntimeError(f"bench child failed with exit code {rc}")
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def spawn(path: str, args, n: int, m: dict) -> dict:
    """Path `path` over users [0, n) as --threads single-threaded worker processes on equal slices, run
    at once; wall = first start to last end of their timed calls; metrics from the merged sums."""
    from hetcomp_dist.evaluation.metrics import MetricSums

    cuts = np.linspace(0, n, args.threads + 1).astype(int)
    base = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        path,
        "--run",
        args.run,
        "--dim",
        str(args.dim),
        "--emb",
        args.emb,
    ]
    procs = [
        subprocess.Popen(base + ["--lo", str(lo), "--hi", str(hi)], stdout=subprocess.PIPE, text=True)
        for lo, hi in zip(cuts[:-1], cuts[1:])
    ]
    parts = [_result(p.communicate()[0], p.returncode) for p in procs]
    wall = max(r["t1"] for r in parts) - min(r["t0"] for r in parts)
    cpu = sum(r["cpu_s"] for r in parts)
    metrics = {}
    for split in ("valid", "test"):
        total = MetricSums((10, 50))
        for r in parts:
            total.merge(MetricSums.from_state(r["sums"][split], (10, 50)))
        metrics[split] = total.means()
    return {
        "users_per_s": n / wall,
        "users_per_cpu_s": n / cpu,
        "wall_s": wall,
        "cpu_s": cpu,
        "metrics": metrics,
        "peak_rss_gib": max(r["peak_rss_gib"] for r in parts),
        "processes": len(parts),
        "warmup_s": max(r["warmup_s"] for r in parts),
        "scanned_fraction": sum(r["scanned"] for r in parts) / (n * m["n_items"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "hetcomp-bench-1m"))
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=6)
    p.add_argument(
        "--emb",
        choices=("gaussian", "popnorm"),
        default="gaussian",
        help="embeddings: i.i.d. normal, or item norms growing with popularity (like trained ones)",
    )
    p.add_argument("--faiss-users", type=int, default=0, help="users of the two FAISS paths (0 = all)")
    p.add_argument(
        "--pruned-users", type=int, default=0, help="users of the pruned torch scan (0 = as FAISS)"
    )
    p.add_argument("--bruteforce-users", type=int, default=50_000, help="users of the brute-force subsample")
    p.add_argument("--threads", type=int, default=2, help="worker processes per path, one thread each")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--lo", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hi", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    m = setup(args)
    embeddings(args, m)  # build the cached embeddings once (untimed)
    n_f = args.faiss_users or m["n_users"]
    users = {"faiss": n_f, "faiss_blocked": n_f, "pruned": args.pruned_users or n_f}
    users["bruteforce"] = min(args.bruteforce_users, *users.values())
    n_b = users["bruteforce"]
    # the brute-force users through every path first: the metrics must agree
    common = {path: spawn(path, args, n_b, m) for path in PATHS if path != "bruteforce"}
    runs = {path: [] for path in PATHS}
    for _ in range(args.repeats):
        for path in PATHS:
            runs[path].append(spawn(path, args, users[path], m))
            r = runs[path][-1]
            log(
                STAGE,
                f"{path}: {r['users_per_s']:,.0f} users/s ({r['users_per_cpu_s']:,.0f} per CPU-s) over "
                f"{users[path]:,} users; load average {os.getloadavg()[0]:.1f}",
            )
    ref = runs["bruteforce"][0]["metrics"]
    diffs = {
        path: max(abs(common[path]["metrics"][s][k] - ref[s][k]) for s in ref for k in ref[s])
        for path in common
    }
    med = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
    log(STAGE, f"{'path':14s} {'users/s':>9s} {'per CPU-s':>10s} {'peak RSS GiB':>13s} {'users':>10s}")
    for path in PATHS:
        log(
            STAGE,
            f"{path:14s} {med(path, 'users_per_s'):9,.0f} {med(path, 'users_per_cpu_s'):10,.0f} "
            f"{max(r['peak_rss_gib'] for r in runs[path]):13.2f} {users[path]:10,}",
        )
    figures = {
        f"{path}_{key}": round(med(path, key), 1)
        for path in PATHS
        for key in ("users_per_s", "users_per_cpu_s")
    }
    figures.update(
        {f"{path}_peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs[path]), 3) for path in PATHS}
    )
    figures.update({f"{path}_users": users[path] for path in PATHS})
    figures.update({f"{path}_warmup_s": round(max(r["warmup_s"] for r in runs[path]), 2) for path in PATHS})
    figures.update({f"{path}_vs_bruteforce_max_abs_diff": diffs[path] for path in diffs})
    figures.update(
        {
            "faiss_blocked_scanned_fraction": round(med("faiss_blocked", "scanned_fraction"), 4),
            "pruned_scanned_fraction": round(med("pruned", "scanned_fraction"), 4),
            "peak_rss_gib": round(max(r["peak_rss_gib"] for rs in runs.values() for r in rs), 3),
            "bruteforce_subsample": n_b < m["n_users"],
            "processes_per_path": args.threads,
            "threads_per_process": 1,
            "n_users": m["n_users"],
            "n_items": m["n_items"],
            "dim": args.dim,
            "emb": args.emb,
            "k": K,
            "repeats": args.repeats,
            "metrics_max_abs_diff": max(diffs.values()),
            "metrics_agree_1e-6": max(diffs.values()) <= 1e-6,
            "faiss_metrics_first_users": runs["faiss"][0]["metrics"],
            "load_avg_1m": os.getloadavg()[0],
        }
    )
    for path in ("faiss", "faiss_blocked", "pruned"):
        figures[f"{path}_speedup_vs_bruteforce"] = round(
            figures[f"{path}_users_per_s"] / figures["bruteforce_users_per_s"], 2
        )
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
