"""Benchmark: FAISS evaluation vs the exact pruned scan vs a brute-force torch top-K, 1M users x 100k items, dim 6.

    python jobs/bench_evaluate.py [--run DIR] [--users 1000000] [--items 100000] [--dim 6]
                                  [--emb gaussian|popnorm] [--faiss-users N] [--pruned-users N]
                                  [--bruteforce-users 50000] [--threads 2] [--repeats 1]

Setup (untimed): the synthetic run (`synthesize`, reused when DIR already holds it) and dimension-6
user/item embeddings (seed 0), either

- ``gaussian``: i.i.d. standard normal users and items (the hard case for norm pruning: item norms
  carry no signal), or
- ``popnorm``: like trained embeddings, item norms grow with popularity -- item = random unit
  direction x (0.1 + log(1 + train count)); user = sum of its train items' vectors + N(0, 0.1^2)
  noise (cached next to the run as ``DIR-emb-popnorm.npz``).

Then, each in its own child process so that each reports its own peak memory, over the first N users
of the run, both protocols (valid excludes train ∪ test, test excludes train ∪ valid), K = 50:

- faiss: `evaluate_embeddings(..., users=(0, N))` -- the package's evaluation (exact flat FAISS index,
  one candidate search per user serving both protocols, users grouped by exclusion size);
- pruned: the same call with ``EvalConfig(index="pruned")`` -- exact norm-pruned torch scan
  (`retrieval.PrunedIndex`), one top-K search excluding train ∪ valid ∪ test, held-out items merged
  back per protocol; reports the share of the users x items scores it computed (``scanned``). The
  scan is single-threaded, so the path runs as --threads worker processes over equal user slices
  (``users=(lo, hi)``, sums merged), like the Ray path's one task per CPU; wall = first start to last
  end of the workers' evaluation calls (process start-up and embedding set-up excluded, as for the others);
- bruteforce: a plain torch loop written here -- (B, n_items) scores, the protocol's exclusion set
  to -inf, torch.topk(50), per protocol -- over the first --bruteforce-users users (a subsample:
  it is slower; the rate is per user, so it compares), metrics through the same `recall_ndcg`.

All three paths' metrics over the common (brute-force) users are checked equal (1e-6). Timings include
reading the shards. The machine is shared: the rates are noisy; --repeats gives medians. Besides the
wall rates (users/s) the JSON has users per CPU-second of each process (all its threads), which an
oversubscribed machine distorts less; with T threads the uncontended wall rate is at most T times it.
Ends with ONE JSON line: faiss_users_per_s, pruned_users_per_s, bruteforce_users_per_s, peak_rss_gib
and the details.
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


def embeddings(args, m: dict) -> tuple[np.ndarray, np.ndarray]:
    """(users (n_users, dim), items (n_items, dim)) float32 of kind --emb (see the module docstring)."""
    n_users, n_items, dim = m["n_users"], m["n_items"], args.dim
    rng = np.random.default_rng(0)
    if args.emb == "gaussian":
        return (rng.standard_normal((n_users, dim), dtype=np.float32),
                rng.standard_normal((n_items, dim), dtype=np.float32))
    path = f"{args.run.rstrip('/')}-emb-{args.emb}-d{dim}.npz"
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            return z["user"], z["item"]
    from hetcomp_dist.data.dataset import load_shard

    direction = rng.standard_normal((n_items, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    count = np.zeros(n_items)
    shards = list(storage.iter_shards("", n_users, m["shard_size"]))
    for s, _, _ in shards:
        count += np.bincount(load_shard(args.run, "train", s, m).items, minlength=n_items)
    V = direction * (0.1 + np.log1p(count))[:, None]
    U = np.empty((n_users, dim))
    for s, lo, hi in shards:
        tr = load_shard(args.run, "train", s, m)
        rows = np.repeat(np.arange(hi - lo), tr.lengths())
        for j in range(dim):
            U[lo:hi, j] = np.bincount(rows, weights=V[tr.items, j], minlength=hi - lo)
    U += 0.1 * rng.standard_normal(U.shape)
    U, V = U.astype(np.float32), V.astype(np.float32)
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


# ------------------------------------------------------------------------------------ the two paths
def run_faiss(args, m: dict) -> dict:
    import faiss

    from hetcomp_dist.evaluation.evaluate import evaluate_embeddings

    faiss.omp_set_num_threads(args.threads)
    U, V = embeddings(args, m)
    rss0 = peak_rss_gib()
    t, c = time.perf_counter(), time.process_time()
    res = evaluate_embeddings(args.run, U, V, "ip", EvalConfig(), users=(0, args.n))
    return _rates(args.n, t, c, {s: res[s] for s in ("valid", "test")}, rss0)


def run_pruned(args, m: dict) -> dict:
    """One worker of the pruned path: users [lo, hi), one core (the scan is single-threaded)."""
    from hetcomp_dist.evaluation import evaluate

    U, V = embeddings(args, m)
    built = []
    build = evaluate.build_index
    evaluate.build_index = lambda *a, **kw: built.append(build(*a, **kw)) or built[-1]  # to read .scanned
    rss0 = peak_rss_gib()
    t0, t, c = time.time(), time.perf_counter(), time.process_time()
    res = evaluate.evaluate_embeddings(args.run, U, V, "ip", EvalConfig(index="pruned"), users=(args.lo, args.hi))
    out = _rates(args.hi - args.lo, t, c, res["sums"], rss0)
    out.update(t0=t0, t1=time.time(), scanned=sum(ix.scanned for ix in built))
    return out


def spawn_pruned(args, n: int, m: dict) -> dict:
    """The pruned path on --threads cores: that many single-core worker processes over equal user
    slices of [0, n), run at once (as the Ray path runs one task per CPU); wall = first start to last
    end of the evaluation calls; metrics from the merged sums."""
    from hetcomp_dist.evaluation.metrics import MetricSums

    cuts = np.linspace(0, n, args.threads + 1).astype(int)
    procs = [subprocess.Popen(_cmd("pruned", args, n) + ["--lo", str(lo), "--hi", str(hi)], stdout=subprocess.PIPE,
                              text=True) for lo, hi in zip(cuts[:-1], cuts[1:])]
    parts = [_result(p.communicate()[0], p.returncode) for p in procs]
    wall = max(r["t1"] for r in parts) - min(r["t0"] for r in parts)
    cpu = sum(r["cpu_s"] for r in parts)
    sums = {}
    for split in ("valid", "test"):
        total = MetricSums((10, 50))
        for r in parts:
            total.merge(MetricSums.from_state(r["metrics"][split], (10, 50)))
        sums[split] = total.means()
    return {"users_per_s": n / wall, "users_per_cpu_s": n / cpu, "wall_s": wall, "cpu_s": cpu, "metrics": sums,
            "peak_rss_gib": max(r["peak_rss_gib"] for r in parts), "processes": len(parts),
            "scanned_fraction": sum(r["scanned"] for r in parts) / (n * m["n_items"])}


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
    U, V = embeddings(args, m)
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
    out = {"faiss": run_faiss, "pruned": run_pruned, "bruteforce": run_bruteforce}[args.child](args, m)
    print("RESULT " + json.dumps(out), flush=True)


def _cmd(path: str, args, n: int) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--child", path, "--run", args.run, "--n", str(n),
            "--dim", str(args.dim), "--threads", str(args.threads), "--emb", args.emb]


def _result(stdout: str, rc: int) -> dict:
    if rc != 0:
        raise RuntimeError(f"bench child failed with exit code {rc}")
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def spawn(path: str, args, n: int, m: dict) -> dict:
    if path == "pruned":
        return spawn_pruned(args, n, m)
    proc = subprocess.run(_cmd(path, args, n), stdout=subprocess.PIPE, text=True)
    return _result(proc.stdout, proc.returncode)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "hetcomp-bench-1m"))
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=6)
    p.add_argument("--emb", choices=("gaussian", "popnorm"), default="gaussian",
                   help="embeddings: i.i.d. normal, or item norms growing with popularity (like trained ones)")
    p.add_argument("--faiss-users", type=int, default=0, help="users evaluated by FAISS (0 = all)")
    p.add_argument("--pruned-users", type=int, default=0, help="users evaluated by the pruned scan (0 = as FAISS)")
    p.add_argument("--bruteforce-users", type=int, default=50_000, help="users of the brute-force subsample")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", choices=("faiss", "pruned", "bruteforce"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--lo", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hi", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    m = setup(args)
    embeddings(args, m)  # build the cached embeddings once (untimed)
    n_f = args.faiss_users or m["n_users"]
    n_p = args.pruned_users or n_f
    n_b = min(args.bruteforce_users, n_f, n_p)
    runs = {"faiss": [], "pruned": [], "bruteforce": []}
    # the same users through every path first: the metrics must agree
    common = {path: spawn(path, args, n_b, m) for path in ("faiss", "pruned")}
    for _ in range(args.repeats):
        for path, n in (("bruteforce", n_b), ("faiss", n_f), ("pruned", n_p)):
            runs[path].append(spawn(path, args, n, m))
            r = runs[path][-1]
            log(STAGE, f"{path}: {r['users_per_s']:,.0f} users/s ({r['users_per_cpu_s']:,.0f} per CPU-s) over {n:,} "
                       f"users; load average {os.getloadavg()[0]:.1f}")
    ref = runs["bruteforce"][0]["metrics"]
    diffs = {path: max(abs(common[path]["metrics"][s][k] - ref[s][k]) for s in ref for k in ref[s])
             for path in common}
    diff = max(diffs.values())
    med = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
    figures = {
        "faiss_users_per_s": round(med("faiss", "users_per_s"), 1),
        "pruned_users_per_s": round(med("pruned", "users_per_s"), 1),
        "bruteforce_users_per_s": round(med("bruteforce", "users_per_s"), 1),
        "faiss_users_per_cpu_s": round(med("faiss", "users_per_cpu_s"), 1),
        "pruned_users_per_cpu_s": round(med("pruned", "users_per_cpu_s"), 1),
        "bruteforce_users_per_cpu_s": round(med("bruteforce", "users_per_cpu_s"), 1),
        "pruned_scanned_fraction": round(med("pruned", "scanned_fraction"), 4),
        "faiss_users": n_f, "pruned_users": n_p, "bruteforce_users": n_b, "bruteforce_subsample": n_b < m["n_users"],
        "faiss_peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs["faiss"]), 3),
        "pruned_peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs["pruned"]), 3),
        "bruteforce_peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs["bruteforce"]), 3),
        "pruned_processes": runs["pruned"][0]["processes"],
        "n_users": m["n_users"], "n_items": m["n_items"], "dim": args.dim, "emb": args.emb, "k": K,
        "threads": args.threads, "repeats": args.repeats, "metrics_max_abs_diff": diff,
        "faiss_vs_bruteforce_max_abs_diff": diffs["faiss"], "pruned_vs_bruteforce_max_abs_diff": diffs["pruned"],
        "metrics_agree_1e-6": diff <= 1e-6,
        "faiss_metrics_first_users": runs["faiss"][0]["metrics"], "load_avg_1m": os.getloadavg()[0],
    }
    figures["peak_rss_gib"] = max(figures[f"{p}_peak_rss_gib"] for p in ("faiss", "pruned", "bruteforce"))
    figures["speedup"] = round(figures["faiss_users_per_s"] / figures["bruteforce_users_per_s"], 2)
    figures["pruned_speedup_vs_faiss"] = round(figures["pruned_users_per_s"] / figures["faiss_users_per_s"], 2)
    figures["pruned_cpu_speedup_vs_faiss"] = round(figures["pruned_users_per_cpu_s"]
                                                   / figures["faiss_users_per_cpu_s"], 2)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
