"""Benchmark of the knowledge stage: one DKC round, vectorised vs a plain per-user loop, and at 1M users.

    python jobs/bench_knowledge.py [--workdir DIR] [--users-1m 1000000] [--skip-1m] [--repeats 3]
                                   [--keep] [--reuse]

Synthetic inputs in the exact on-storage layout (6 teachers x 4 states x K = 100; `synthesize` for the
data, `hetcomp_dist.testing.trajectories` for the trajectories and a student whose embeddings drift
between rounds).
Setup (data, trajectories, round 0 with its copies of the teachers' states, round 1 = the first DKC
call) is untimed; the timed rounds read the states from those copies, as every DKC round does.

1. CiteULike size (5,219 users, 25,181 items, ~24 interactions per user): round 2 (a round with moves)
   -- (a) the DKC computation on the same in-memory arrays, vectorised (`dkc_step_targets` given the
   catalogue size, as a round gives it: the step and the new targets in one compiled pass, in
   batches; numba kernels on numba's default thread count, and on 1 thread) and as a plain per-user
   Python loop written here, side by side, alternating, checked equal; medians of --repeats runs;
   (b) the whole in-process round through `dkc_round`, retrieval timed apart.
2. 1M users (vectorised only): round 2 through a Ray Data map over 50k-user shards on a 2-CPU Ray
   instance (one numba thread per task), per-task retrieval and rest timed apart, peak memory per task.

JIT: the kernels compile on a machine's first run (cache=True keeps them in __pycache__ for every
later process, Ray workers included); none of that is timed: (a) is preceded by a warm-up call on
256 users, (b) by an untimed run of the same round, and the Ray workers of (2) have loaded the
kernels in rounds 0 and 1 of the setup (the targets kernel from numba's cache at its first use).

Ends with one JSON line: speedup_vs_loop (default threads), speedup_vs_loop_1_thread, round_users_per_s_1m,
peak_rss_gib, and the raw figures (wall and CPU seconds; the load average and `host_thread_scaling`
at start and end: on a VM whose two vCPUs share a busy core, the default-threads figures drop with it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

import numpy as np  # noqa: E402

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import Config, from_dict  # noqa: E402
from hetcomp_dist.data.dataset import load_manifest, load_shard  # noqa: E402
from hetcomp_dist.data.synth import synthesize  # noqa: E402
from hetcomp_dist.knowledge import rounds, shard_io  # noqa: E402
from hetcomp_dist.knowledge.dkc import DKCParams, dkc_step_targets  # noqa: E402
from hetcomp_dist.layout import RunLayout  # noqa: E402
from hetcomp_dist.progress import log, peak_rss_gib  # noqa: E402
from hetcomp_dist.testing.trajectories import perturb_embeddings, write_trajectories  # noqa: E402

STAGE = "bench_knowledge"


# ----------------------------------------------------------------------------- the per-user loop
def loop_round(lists, v, d, sigma, prev_targets, epoch, first, p: DKCParams, K: int, T: float = 10.0):
    """DKC + targets one user and one teacher at a time (METHOD.md §3), plain Python, like the
    public code's loops. Returns (v, d, targets) with the dtypes of the vectorised path."""
    n, M, S, _ = lists.shape
    last = S - 1
    w = [(2 ** math.exp(-t / p.d_lambda) - 1) / math.log2(t + 2) for t in range(p.d_k)]
    ideal = sum(w)
    imp = [math.exp(-r / T) for r in range(lists.shape[3])]
    th = p.alpha * p.decay ** (epoch // p.period) if p.move_rule == "code" else p.alpha
    v_out, d_out = v.astype(np.int8).copy(), d.astype(np.float32).copy()
    targets = prev_targets.copy()
    for u in range(n):
        sig = sigma[u, : p.d_k].tolist()
        lu = lists[u].tolist()

        def D(x, s, lu=lu, sig=sig):  # this user's lists and sigma, bound per iteration
            top = set(lu[x][s][: p.d_k])
            top.discard(-1)
            missed = sum(w[t] for t, i in enumerate(sig) if i < 0 or i not in top) + sum(w[len(sig) :])
            return float(np.float32(missed / ideal))

        changed = False
        for x in range(M):
            vx = int(v_out[u, x])
            if first:
                d_out[u, x] = D(x, min(vx + 1, last))
                continue
            if vx == last:
                continue
            dn = D(x, vx + 1)
            rho = math.inf if dn == 0 else float(d_out[u, x]) / dn
            if (rho > th or rho < 1) if p.move_rule == "code" else rho > th:
                v_out[u, x] = vx + 1
                d_out[u, x] = D(x, min(vx + 2, last))
                changed = True
        if changed:
            terms: dict[int, list[float]] = {}
            for x in range(M):
                for r, item in enumerate(lu[x][int(v_out[u, x])]):
                    if item >= 0:
                        terms.setdefault(item, []).append(imp[r])
            score = {i: math.fsum(ts) for i, ts in terms.items()}  # exact ties only for equal rank sets
            top = sorted(score, key=lambda i: (-score[i], i))[:K]
            targets[u] = top + [-1] * (K - len(top))
    return v_out, d_out, targets


def vector_round(
    lists, v, d, sigma, prev_targets, epoch, first, p: DKCParams, K: int, n_items: int, batch: int = 2048
):
    """The same round with the library's vectorised functions, in batches of users, given the
    catalogue size like a round (`rounds.dkc_shard`)."""
    n = len(lists)
    v_out, d_out = np.empty(v.shape, np.int8), np.empty(d.shape, np.float32)
    targets = np.empty_like(prev_targets)
    for b0 in range(0, n, batch):
        b1 = min(b0 + batch, n)
        v_out[b0:b1], d_out[b0:b1], _, targets[b0:b1] = dkc_step_targets(
            lists[b0:b1],
            v[b0:b1],
            d[b0:b1],
            sigma[b0:b1],
            epoch,
            first,
            p,
            prev_targets[b0:b1],
            n_items=n_items,
        )
    return v_out, d_out, targets


# ------------------------------------------------------------------------------------------ setup
def make_run(path: str, users: int, items: int, shard_size: int, mean: float, **knowledge) -> Config:
    """Synthetic data + trajectories + round 0 + round 1 (the first DKC call); returns the config."""
    cfg = from_dict(
        Config,
        {
            "run": path,
            "data": {"shard_size": shard_size},
            "synth": {"users": users, "items": items, "mean_interactions": mean},
            "knowledge": knowledge,
        },
    )
    t0 = time.perf_counter()
    synthesize(path, cfg.synth, cfg.data)  # skipped when committed (--reuse)
    if storage.read_manifest(RunLayout(path).teacher(cfg.teachers.names[-1])) is None or not storage.exists(
        f"{path}/emb2.npz"
    ):
        write_trajectories(path, cfg, seed=1, emb_path=f"{path}/emb0.npz", distributed=users >= 200_000)
        for r in (1, 2):
            perturb_embeddings(f"{path}/emb0.npz", f"{path}/emb{r}.npz", scale=0.5, seed=r)
    rounds.build_round0(path, cfg)  # both skipped when committed
    rounds.dkc_round(path, cfg, 1, 10, f"{path}/emb1.npz")
    storage.delete_dir(RunLayout(path).round(2))  # the round to time
    log(STAGE, f"setup of {users:,} users done in {time.perf_counter() - t0:.0f}s (untimed)")
    return cfg


def shard_inputs(cfg: Config, s: int):
    """In-memory inputs of round 2 for shard s: lists (n, M, S, K), v, d, sigma, previous targets."""
    data = load_manifest(cfg.run)
    names = tuple(cfg.teachers.names)
    lo, hi = storage.shard_range(s, data["shard_size"], data["n_users"])
    K = cfg.knowledge.topk
    v, d, prev = shard_io.read_round(cfg.run, 1, lo, hi, len(names), K, data)
    lists = np.full((hi - lo, len(names), rounds.N_STATES, K), -1, dtype=np.int32)
    for x, name in enumerate(names):
        for e in range(rounds.N_STATES):
            lists[:, x, e] = shard_io.read_dense(
                RunLayout(cfg.run).teacher_state(name, e + 1), lo, hi, K, data
            )
    task = rounds.RoundTask(cfg.run, cfg, names, data, 2, 20, f"{cfg.run}/emb2.npz")
    sigma = rounds.student_topk(task, lo, hi, load_shard(cfg.run, "train", s, data))
    return lists, v, d, sigma, prev


# -------------------------------------------------------------------------------------- benches
def host_thread_scaling(n: int = 20_000_000, repeats: int = 5) -> float:
    """How much a second thread adds on this host right now: the wall time of one compute-only chunk
    on 1 thread against two such chunks on 2 threads (2.0 = two free cores; ~1.0 = one core's worth,
    e.g. a VM's two vCPUs on one busy physical core). The speedup at numba's default threads scales
    with it; the 1-thread figure does not."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def busy(iters, chunks):
        out = np.zeros(chunks)
        for c in numba.prange(chunks):
            x = 0.0
            for i in range(iters):
                x += (i * 0.5) % 7.3
            out[c] = x
        return out

    busy(10, 2)
    one = statistics.median(_timed(lambda: busy(n, 1))[0] for _ in range(repeats))
    two = statistics.median(_timed(lambda: busy(n, 2))[0] for _ in range(repeats))
    return 2 * one / two


def _timed(fn):
    """(wall seconds, CPU seconds of this process, result) of fn()."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _same(a, b) -> bool:
    return (
        np.array_equal(a[0], b[0])
        and np.allclose(a[1], b[1], rtol=0, atol=1e-6, equal_nan=True)
        and np.array_equal(a[2], b[2])
    )


def bench_citeulike(workdir: str, repeats: int) -> dict:
    import numba

    path = f"{workdir}/citeulike_size"
    cfg = make_run(path, 5219, 25181, 50_000, 24.06, distributed_min_users=10**9)
    p = DKCParams.from_config(cfg.knowledge)
    K = cfg.knowledge.topk
    lists, v, d, sigma, prev = shard_inputs(cfg, 0)
    n, n_items = len(lists), load_manifest(path)["n_items"]
    threads = numba.get_num_threads()
    # warm-up (untimed): compiles the kernels on a machine's first run, else loads them from numba's cache
    warm_s, _, _ = _timed(
        lambda: vector_round(lists[:256], v[:256], d[:256], sigma[:256], prev[:256], 20, False, p, K, n_items)
    )
    runs: dict[str, list] = {"vec": [], "vec_1_thread": [], "loop": []}

    def one_thread():
        numba.set_num_threads(1)
        try:
            return vector_round(lists, v, d, sigma, prev, 20, False, p, K, n_items)
        finally:
            numba.set_num_threads(threads)

    for _ in range(repeats):  # side by side, alternating, medians (wall and CPU seconds)
        for name, fn in (
            ("vec", lambda: vector_round(lists, v, d, sigma, prev, 20, False, p, K, n_items)),
            ("vec_1_thread", one_thread),
            ("loop", lambda: loop_round(lists, v, d, sigma, prev, 20, False, p, K)),
        ):
            runs[name].append(_timed(fn))
    ref = runs["loop"][0][2]
    if not all(_same(r[2], ref) for r in runs["vec"] + runs["vec_1_thread"]):
        raise AssertionError("the vectorised round and the per-user loop disagree")
    changed = int((ref[0] != v).any(1).sum())
    wall = {k: statistics.median(r[0] for r in x) for k, x in runs.items()}
    cpu = {k: statistics.median(r[1] for r in x) for k, x in runs.items()}
    log(
        STAGE,
        f"CiteULike size: DKC compute vectorised {wall['vec']:.4f}s ({n / wall['vec']:,.0f} users/s, "
        f"{threads} threads; 1 thread {wall['vec_1_thread']:.4f}s), per-user loop {wall['loop']:.2f}s "
        f"({n / wall['loop']:,.0f} users/s): {wall['loop'] / wall['vec']:.0f}x "
        f"({wall['loop'] / wall['vec_1_thread']:.0f}x on 1 thread); {changed} of {n} users changed",
    )
    rounds.dkc_round(path, cfg, 2, 20, f"{path}/emb2.npz")  # warm-up of the shard path's kernels (untimed)
    storage.delete_dir(RunLayout(path).round(2))
    t0 = time.perf_counter()
    m = rounds.dkc_round(path, cfg, 2, 20, f"{path}/emb2.npz")  # the whole in-process round, from storage
    round_wall = time.perf_counter() - t0
    rest = round_wall - m["task_retrieval_s"]
    return {
        "users": n,
        "changed_users": changed,
        "numba_threads": threads,
        "warm_up_s": warm_s,
        "vectorised_compute_s": wall["vec"],
        "vectorised_compute_1_thread_s": wall["vec_1_thread"],
        "loop_compute_s": wall["loop"],
        "speedup_vs_loop": wall["loop"] / wall["vec"],
        "speedup_vs_loop_1_thread": wall["loop"] / wall["vec_1_thread"],
        "vectorised_compute_cpu_s": cpu["vec"],
        "vectorised_compute_1_thread_cpu_s": cpu["vec_1_thread"],
        "loop_compute_cpu_s": cpu["loop"],
        "speedup_vs_loop_cpu": cpu["loop"] / cpu["vec"],
        "speedup_vs_loop_cpu_1_thread": cpu["loop"] / cpu["vec_1_thread"],
        "round_wall_s": round_wall,
        "round_retrieval_s": m["task_retrieval_s"],
        "round_rest_s": rest,
        "round_users_per_s_without_retrieval": n / rest,
        "round_rest_cpu_s": m["task_rest_cpu_s"],
        "round_retrieval_cpu_s": m["task_retrieval_cpu_s"],
        "speedup_loop_vs_whole_round_without_retrieval": wall["loop"] / rest,
    }


def bench_1m(workdir: str, users: int) -> dict:
    import ray

    path = f"{workdir}/one_million"
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    cfg = make_run(path, users, 25181, 50_000, 24.06, distributed_min_users=0)
    t0 = time.perf_counter()
    m = rounds.dkc_round(path, cfg, 2, 20, f"{path}/emb2.npz")
    wall = time.perf_counter() - t0
    retr, rest = m["task_retrieval_s"], m["task_rest_s"]
    wall_rest = wall * rest / (rest + retr)  # the round's wall time, its retrieval share removed
    cpu = m["task_rest_cpu_s"]
    return {
        "users": users,
        "shards": m["n_shards"],
        "changed_users": m["changed_users"],
        "round_wall_s": wall,
        "task_rest_cpu_s_sum": cpu,
        "task_retrieval_cpu_s_sum": m["task_retrieval_cpu_s"],
        # what 2 idle cores would do: the tasks' CPU seconds without retrieval, spread over 2 CPUs
        "round_users_per_s_2_idle_cores_from_cpu_s": 2 * users / cpu if cpu else None,
        "task_retrieval_s_sum": retr,
        "task_rest_s_sum": rest,
        "round_wall_s_without_retrieval": wall_rest,
        "round_users_per_s": users / wall_rest,
        "round_users_per_s_with_retrieval": users / wall,
        "retrieval_users_per_s": users / (wall - wall_rest),
        "task_peak_rss_gib": m["task_peak_rss_gib"],
        "means": m["means"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/bench_knowledge")
    ap.add_argument("--users-1m", type=int, default=1_000_000, help="users of the large run")
    ap.add_argument("--skip-1m", action="store_true", help="only the CiteULike-size comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated runs")
    ap.add_argument(
        "--reuse", action="store_true", help="reuse the runs a --keep run left in --workdir (skips setup)"
    )
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    rounds.tune_malloc()
    if not args.reuse:
        shutil.rmtree(args.workdir, ignore_errors=True)
    out: dict = {
        "machine_cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],  # a shared machine: see load
        "host_2_thread_scaling_start": host_thread_scaling(),
    }
    log(STAGE, f"host: a second thread adds {out['host_2_thread_scaling_start']:.2f}x on compute-only work")
    try:
        out["citeulike"] = bench_citeulike(args.workdir, args.repeats)
        if not args.skip_1m:
            out["one_million"] = bench_1m(args.workdir, args.users_1m)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    out["load_avg_end"] = os.getloadavg()[0]
    out["host_2_thread_scaling_end"] = host_thread_scaling()
    print(
        json.dumps(
            {
                "speedup_vs_loop": round(out["citeulike"]["speedup_vs_loop"], 1),
                "speedup_vs_loop_1_thread": round(out["citeulike"]["speedup_vs_loop_1_thread"], 1),
                "round_users_per_s_1m": round(out["one_million"]["round_users_per_s"])
                if "one_million" in out
                else None,
                "peak_rss_gib": round(
                    max(peak_rss_gib(), out.get("one_million", {}).get("task_peak_rss_gib", 0)), 2
                ),
                **out,
            },
            default=float,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
