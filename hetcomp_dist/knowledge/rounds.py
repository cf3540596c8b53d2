"""Knowledge rounds on storage: round 0 (P+ and the E1 targets) and DKC rounds, one task per user shard.

A round is a map over shard ids. Task s opens shard s of every input -- ``data/train``, each teacher's
``state=<e>`` (and ``observed`` at round 0), round r-1 -- and zips them positionally
(every dataset of a run uses the same user-range shards: no shuffle, memory bounded by one shard).
It computes in batches of users with the pure functions of `ensemble` / `dkc`, writes its output
shard atomically and returns small statistics; the driver sums them, decides the switch and writes
the manifest last. Small runs map in-process (Ray's fixed costs are seconds); from
``knowledge.distributed_min_users`` users on, the same task function runs as a Ray Data map over
shard ids. Both give identical files.

Round 0 also copies every teacher state shard to RUN/knowledge/states as an lz4 Arrow IPC file
(``knowledge.cache_states``, on by default; `shard_io.write_state_cache`): every DKC round reads a
shard's states again, and decoding Parquet lists was most of a round's time. The copies are part of
round 0 -- made from the files round 0 checked, deleted and remade with it -- so the DKC rounds read
the teachers' trajectories as round 0 saw them. A round 0 built without them is read from Parquet.

Round 0 lives in RUN/knowledge and is shared by every student. Rounds r >= 1 follow one student's
rankings: the trainer keeps them in the student's folder (``rounds=`` of `dkc_round`), so students
trained side by side on one run (the λ grid, `reproduce_table2`, two `distill` commands) never read
or delete each other's rounds; by hand (`hetcomp-dist knowledge --round r`) they go to RUN/knowledge.

Idempotent: a round whose manifest carries the expected config hash is returned as is. The hash
chains round r to round r-1 (and round 0 to the data and the teachers), so stale rounds are redone.
A round's hash includes the student's embedding path: a rerun that writes new embeddings elsewhere
(or another student pointed at the same folder) recomputes the round instead of reusing old decisions.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.config import Config, to_dict
from hetcomp_dist.data.dataset import load_manifest, load_shard, read_lists
from hetcomp_dist.errors import InputError
from hetcomp_dist.evaluation.retrieval import index_for, search_excluding
from hetcomp_dist.knowledge.dkc import DKCParams, dkc_step_targets, state_means, switch_fired
from hetcomp_dist.knowledge.ensemble import ensemble_topk, ensemble_topk_csr
from hetcomp_dist.knowledge.shard_io import (
    block,
    check_ids,
    read_dense,
    read_round,
    read_state_cache,
    write_round_shard,
    write_state_cache,
)
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import Progress, log, peak_rss_gib
from hetcomp_dist.resources import this_node

N_STATES = 4  # E1..E4; state index v in 0..3
STAGE = "knowledge"


def tune_malloc() -> None:
    """Keeps batch temporaries (< 32 MiB) on glibc's heap instead of fresh mmaps.

    The vectorised batches allocate many short-lived arrays of a few MiB; by default glibc maps and
    unmaps each, and the page faults would cost as much as the arithmetic.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD


# ------------------------------------------------------------------------------------------ task
@dataclass(frozen=True)
class RoundTask:
    """Everything a shard task needs (small, picklable: paths and config, no arrays)."""

    run: str
    cfg: Config
    names: tuple[str, ...]
    data: dict  # the data manifest (n_users, n_items, shard_size)
    round_idx: int
    epoch: int = 0
    emb_path: str = ""
    metric: str = "ip"
    rounds: str | None = None  # where rounds >= 1 live (`RunLayout.round`)
    state_cache: bool = (
        False  # read the teachers' states from round 0's copies (`shard_io.write_state_cache`)
    )

    @property
    def kc(self):
        return self.cfg.knowledge

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run)

    def cache_shard(self, name: str, e: int, s: int) -> str:
        """Shard s of round 0's copy of teacher `name`'s state E_e (`shard_io.write_state_cache`)."""
        return storage.shard_path(self.layout.state_cache(name, e), s, ".arrow")

    def weights(self) -> np.ndarray | None:
        return np.asarray(self.kc.weights, dtype=np.float64) if self.kc.weights else None


def round0_shard(task: RoundTask, s: int) -> dict:
    """Shard s of round 0: P+ (ensemble of the observed orders) and T_u = g of the E1 lists."""
    tune_malloc()
    t0, c0 = time.perf_counter(), time.process_time()
    kc, names, run = task.kc, task.names, task.run
    lo, hi = storage.shard_range(s, task.data["shard_size"], task.data["n_users"])
    n, M, n_items = hi - lo, len(names), task.data["n_items"]
    train = load_shard(run, "train", s, task.data)
    e1 = block((M, n, kc.topk))
    other = block((n, kc.topk)) if task.state_cache else None  # E2..E4, one at a time, for their copies
    observed = []
    for x, name in enumerate(names):
        read_dense(task.layout.teacher_state(name, 1), lo, hi, kc.topk, task.data, out=e1[x], n_items=n_items)
        if task.state_cache:  # every later round reads the states from these copies
            write_state_cache(task.cache_shard(name, 1, s), lo, hi, e1[x], n_items)
            for e in range(2, N_STATES + 1):
                write_state_cache(
                    task.cache_shard(name, e, s),
                    lo,
                    hi,
                    read_dense(
                        task.layout.teacher_state(name, e),
                        lo,
                        hi,
                        kc.topk,
                        task.data,
                        out=other,
                        n_items=n_items,
                    ),
                    n_items,
                )
        odir = task.layout.teacher_observed(name)
        opath = storage.shard_path(odir, s)
        obs = read_lists(odir, "items", lo, hi, task.data)
        off, val = obs.offsets, obs.items
        if not np.array_equal(np.diff(off), train.lengths()):
            raise InputError(
                opath,
                "the observed lists do not have the users' train lengths",
                "the teacher's observed export must hold exactly each user's train items",
            )
        check_ids(int(val.max(initial=-1)), n_items, opath)
        observed.append((off, val))
    lists = e1.transpose(1, 0, 2)  # (n, M, K) view
    targets = np.full((n, kc.topk), -1, dtype=np.int32)
    for b0 in range(0, n, kc.batch_users):
        b1 = min(b0 + kc.batch_users, n)
        targets[b0:b1] = ensemble_topk(lists[b0:b1], kc.topk, kc.temperature, task.weights(), n_items)
    pos = ensemble_topk_csr(observed, kc.pos_k, kc.temperature, task.weights(), n_items)
    write_round_shard(
        run, 0, s, lo, hi, np.zeros((n, M), np.int8), np.full((n, M), np.nan, np.float32), targets
    )
    storage.write_table_atomic(
        storage.shard_path(task.layout.pos, s), storage.user_table(lo, hi, items=storage.dense_to_list(pos))
    )
    wall = time.perf_counter() - t0
    log(STAGE, f"round 0 shard {s}: users [{lo}, {hi}) in {wall:.2f}s")
    return {
        "shard": s,
        "n": n,
        "v_sum": [0] * M,
        "moved": [0] * M,
        "changed": 0,
        "retrieval_s": 0.0,
        "wall_s": wall,
        "retrieval_cpu_s": 0.0,
        "cpu_s": time.process_time() - c0,
        "peak_rss_gib": peak_rss_gib(),
        "node_id": this_node()["node_id"],
    }


def student_topk(task: RoundTask, lo: int, hi: int, train) -> np.ndarray:
    """(hi-lo, d_k) the student's top unobserved items (train excluded) through the FAISS factory."""
    emb = storage.read_npz(task.emb_path)
    ev = task.cfg.eval
    index = index_for(emb["item"], task.metric, ev)
    users = emb["user"][lo:hi]
    out = np.full((hi - lo, task.kc.d_k), -1, dtype=np.int32)
    for b0 in range(0, hi - lo, ev.batch_size):
        b1 = min(b0 + ev.batch_size, hi - lo)
        part = train.rows(b0, b1)
        out[b0:b1] = search_excluding(index, users[b0:b1], task.kc.d_k, part.offsets, part.items)
    return out


def needed_states(v: np.ndarray, first: bool) -> list[range]:
    """Per teacher, the state indices a DKC call on users with states v (n, M) can read.

    D reads v+1 (the first call: min(v+1, S-1)) and, for a mover, min(v+2, S-1); the targets of a
    user who moved read each teacher's new state, v or v+1. Parsing a state file is most of a
    round's time, so the states outside [min v, max v + 2] of the shard are not read (at round 2,
    when every v is 0, E4 is skipped: 18 files of 24).
    """
    last = N_STATES - 1
    if len(v) == 0:
        return [range(0)] * v.shape[1]
    lo, hi = v.min(axis=0), v.max(axis=0)
    if first:
        return [range(min(a + 1, last), min(b + 1, last) + 1) for a, b in zip(lo, hi)]
    return [range(a, min(b + 2, last) + 1) for a, b in zip(lo, hi)]


def read_states(task: RoundTask, s: int, lo: int, hi: int, states: list[range]) -> np.ndarray:
    """(n, M, S, K) int32 view of shard s's trajectories, teacher x's states states[x] read: from
    round 0's copies when it made them (`task.state_cache`), else from the teachers' Parquet files.

    The buffer is (M, S, n, K): each state file is copied in as one contiguous block; the states not
    read stay uninitialised and are never read by the kernels (`needed_states`).
    """
    K, n, n_items = task.kc.topk, hi - lo, task.data["n_items"]
    buf = block((len(task.names), N_STATES, n, K))
    for x, name in enumerate(task.names):
        for e in states[x]:
            if task.state_cache:
                read_state_cache(task.cache_shard(name, e + 1, s), lo, hi, buf[x, e], n_items)
            else:
                read_dense(
                    task.layout.teacher_state(name, e + 1),
                    lo,
                    hi,
                    K,
                    task.data,
                    out=buf[x, e],
                    n_items=n_items,
                )
    return buf.transpose(2, 0, 1, 3)


def dkc_shard(task: RoundTask, s: int) -> dict:
    """Shard s of DKC round r >= 1: the student's top-d_k, one DKC step for every user, new targets."""
    tune_malloc()
    t0, c0 = time.perf_counter(), time.process_time()
    kc, names, run, r = task.kc, task.names, task.run, task.round_idx
    M, K = len(names), kc.topk
    lo, hi = storage.shard_range(s, task.data["shard_size"], task.data["n_users"])
    n, first = hi - lo, r == 1
    v, d, prev_targets = read_round(run, r - 1, lo, hi, M, K, task.data, task.rounds)
    train = load_shard(run, "train", s, task.data)
    t_r, c_r = time.perf_counter(), time.process_time()
    sigma = student_topk(task, lo, hi, train)
    t_retrieval, c_retrieval = time.perf_counter() - t_r, time.process_time() - c_r
    lists = read_states(task, s, lo, hi, needed_states(v, first))
    params = DKCParams.from_config(kc)
    v_new = np.empty((n, M), dtype=np.int8)
    d_new = np.empty((n, M), dtype=np.float32)
    targets = np.empty((n, K), dtype=np.int32)
    moved_total = np.zeros(M, dtype=np.int64)
    changed = 0
    for b0 in range(0, n, kc.batch_users):
        b1 = min(b0 + kc.batch_users, n)
        vb, db, moved, targets[b0:b1] = dkc_step_targets(
            lists[b0:b1],
            v[b0:b1],
            d[b0:b1],
            sigma[b0:b1],
            task.epoch,
            first,
            params,
            prev_targets[b0:b1],
            kc.temperature,
            task.weights(),
            task.data["n_items"],
        )
        ch = moved.any(axis=1)
        v_new[b0:b1], d_new[b0:b1] = vb, db
        moved_total += moved.sum(axis=0)
        changed += int(ch.sum())
    del lists
    write_round_shard(run, r, s, lo, hi, v_new, d_new, targets, task.rounds)
    wall = time.perf_counter() - t0
    log(
        STAGE,
        f"round {r} shard {s}: users [{lo}, {hi}), {changed} changed, retrieval {t_retrieval:.2f}s, "
        f"rest {wall - t_retrieval:.2f}s ({n / max(wall - t_retrieval, 1e-9):,.0f} users/s)",
    )
    return {
        "shard": s,
        "n": n,
        "v_sum": v_new.astype(np.int64).sum(axis=0).tolist(),
        "moved": moved_total.tolist(),
        "changed": changed,
        "retrieval_s": t_retrieval,
        "wall_s": wall,
        "retrieval_cpu_s": c_retrieval,
        "cpu_s": time.process_time() - c0,
        "peak_rss_gib": peak_rss_gib(),
        "node_id": this_node()["node_id"],
    }


SHARD_FUNCTIONS = {"round0": round0_shard, "dkc": dkc_shard}


def _ray_entry(shard_fn: Callable[[RoundTask, int], dict], task: RoundTask, batch: dict) -> dict:
    """Ray Data UDF: one shard id in, its statistics (as a JSON string) out."""
    import numba

    # the compiled kernels use as many threads as the task has CPUs (one by default): numba would
    # otherwise start one per core of the node, beside the other tasks' threads
    numba.set_num_threads(max(1, min(int(task.kc.task_cpus), numba.config.NUMBA_NUM_THREADS)))
    stats = [shard_fn(task, int(s)) for s in batch["id"]]
    return {"stats": np.array([json.dumps(x) for x in stats])}


def map_shards(kind: str, task: RoundTask, distributed: bool) -> list[dict]:
    """Runs the shard function over every shard id, in-process or as a Ray Data map; stats by shard."""
    n = storage.n_shards(task.data["n_users"], task.data["shard_size"])
    if not distributed:
        prog = Progress(f"{STAGE} round {task.round_idx}", task.data["n_users"])
        out = []
        for s in range(n):
            out.append(SHARD_FUNCTIONS[kind](task, s))
            prog.update(out[-1]["n"])
        prog.close()
        return out
    import ray

    size = max(1, min(n, task.kc.max_tasks)) if task.kc.max_tasks > 0 else None
    # shard ids as items, not a `range` read: its read tasks would each ask for a whole CPU, which a round
    # run from a Train worker (DKC) may not find beside the workers
    ids = ray.data.from_items([{"id": s} for s in range(n)], override_num_blocks=n)
    ds = ids.map_batches(
        partial(_ray_entry, SHARD_FUNCTIONS[kind], task),
        batch_size=1,
        batch_format="numpy",
        num_cpus=task.kc.task_cpus,
        compute=ray.data.TaskPoolStrategy(size=size),
        max_retries=3,  # bounded: a shard that kills its worker every time fails the round, never hangs it
    )
    out = [json.loads(row["stats"]) for row in ds.take_all()]
    return sorted(out, key=lambda x: x["shard"])


# ---------------------------------------------------------------------------------------- driver
def _dkc_fields(cfg: Config) -> dict:
    kc = cfg.knowledge
    ev = {
        k: v
        for k, v in dataclasses.asdict(cfg.eval).items()
        if k not in ("batch_size", "distributed_min_users")
    }
    return {
        "d_k": kc.d_k,
        "d_variant": kc.d_variant,
        "d_lambda": kc.d_lambda,
        "move_rule": kc.move_rule,
        "alpha": kc.alpha,
        "decay": kc.decay,
        "period": kc.period,
        "index": ev,
    }


def _base(run: str, cfg: Config) -> tuple[dict, tuple[str, ...], str]:
    """(data manifest, teacher names, base hash) after checking the inputs are committed and agree."""
    from hetcomp_dist.knowledge.teacher_ensemble import committed_teachers

    data = load_manifest(run)
    teachers = committed_teachers(run, cfg, data)
    names = tuple(cfg.teachers.names)
    layout = RunLayout(run)
    for name, m in teachers.items():
        for key in ("n_users", "shard_size"):
            if key in m and m[key] != data[key]:
                raise InputError(
                    layout.teacher(name),
                    f"{key} {m[key]} differs from the data's {data[key]}",
                    "retrain the teachers on this run's data",
                )
        if m.get("K", cfg.knowledge.topk) < cfg.knowledge.topk:
            raise InputError(
                layout.teacher(name),
                f"exported K = {m['K']} < knowledge.topk = {cfg.knowledge.topk}",
                "set knowledge.topk <= teachers.topk",
            )
    kc = cfg.knowledge
    for name in ("batch_users", "task_cpus", "topk", "pos_k", "d_k"):
        if getattr(kc, name) <= 0:
            raise InputError(f"knowledge.{name}", f"must be > 0, got {getattr(kc, name)}")
    if kc.weights and (min(kc.weights) < 0 or sum(kc.weights) <= 0):
        raise InputError("knowledge.weights", f"{list(kc.weights)}: weights must be >= 0 and not all 0")
    base = storage.config_hash(
        "knowledge",
        data["config_hash"],
        [teachers[n]["config_hash"] for n in names],
        names,
        kc.topk,
        kc.temperature,
        list(kc.weights),
    )
    return data, names, base


def _round_hash(cfg: Config, r: int, prev_hash: str, epoch: int, emb_digest: str, metric: str) -> str:
    """A DKC round's identity: the round before it, the student's embeddings by content (not by path:
    a retrained student writes new embeddings to the same file), the epoch and the DKC settings."""
    return storage.config_hash("round", r, prev_hash, epoch, emb_digest, metric, _dkc_fields(cfg))


def embeddings_digest(emb: dict[str, np.ndarray]) -> str:
    """SHA-256 of the `user` and `item` arrays (dtype, shape and bytes): what a round was built from."""
    h = hashlib.sha256()
    for key in ("user", "item"):
        a = np.ascontiguousarray(emb[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _chain(run: str, cfg: Config, base: str, upto: int, rounds: str | None = None) -> str:
    """The config hash round `upto` must carry, checking every round before it is committed and current."""
    h = storage.config_hash("round", 0, base)
    layout = RunLayout(run)
    for j in range(upto + 1):
        m = storage.read_manifest(layout.round(j, rounds))
        if m is None:
            raise InputError(
                layout.round(j, rounds),
                "knowledge round not committed",
                "build the rounds in order: build_round0, then dkc_round(1), dkc_round(2), ...",
            )
        if j > 0:
            h = _round_hash(cfg, j, h, m["epoch"], m.get("emb_digest", ""), m["metric"])
        if m.get("config_hash") != h:
            raise InputError(
                layout.round(j, rounds),
                "built from other inputs (data, teachers, config or earlier rounds)",
                "rebuild the knowledge from round 0 (delete RUN/knowledge)",
            )
    return h


def _distributed(cfg: Config, n_users: int) -> bool:
    return n_users >= cfg.knowledge.distributed_min_users


def _commit(
    run: str,
    cfg: Config,
    task: RoundTask,
    stats: list[dict],
    h: str,
    t0: float,
    distributed: bool,
    extra: dict,
) -> dict:
    names, n = task.names, task.data["n_users"]
    v_sum = np.sum([x["v_sum"] for x in stats], axis=0)
    means = state_means(v_sum, n)
    wall = time.perf_counter() - t0
    retrieval = float(sum(x["retrieval_s"] for x in stats))
    manifest = {
        "round": task.round_idx,
        "epoch": task.epoch,
        "teachers": list(names),
        "means": {name: float(mu) for name, mu in zip(names, means)},
        "switch": switch_fired(means, N_STATES - 1),
        "config_hash": h,
        "n_users": n,
        "shard_size": task.data["shard_size"],
        "n_shards": len(stats),
        "K": cfg.knowledge.topk,
        "pos_k": cfg.knowledge.pos_k,
        "n_states": N_STATES,
        "emb_path": task.emb_path,
        "metric": task.metric,
        "changed_users": int(sum(x["changed"] for x in stats)),
        "moved": {name: int(c) for name, c in zip(names, np.sum([x["moved"] for x in stats], axis=0))},
        "distributed": distributed,
        "wall_s": wall,
        "task_retrieval_s": retrieval,
        "task_rest_s": float(sum(x["wall_s"] for x in stats)) - retrieval,
        # CPU seconds of the tasks (robust to a shared machine): the rest of the round vs the retrieval
        "task_retrieval_cpu_s": float(sum(x.get("retrieval_cpu_s", 0.0) for x in stats)),
        "task_rest_cpu_s": float(sum(x.get("cpu_s", 0.0) - x.get("retrieval_cpu_s", 0.0) for x in stats)),
        "peak_rss_gib": max([peak_rss_gib()] + [x["peak_rss_gib"] for x in stats]),
        "task_peak_rss_gib": max(x["peak_rss_gib"] for x in stats),
        "shard_nodes": {str(x["shard"]): x["node_id"] for x in stats},  # where each shard's task ran
        **extra,
    }
    storage.write_manifest(task.layout.round(task.round_idx, task.rounds), manifest, to_dict(cfg))
    log(
        STAGE,
        f"committed round {task.round_idx} (epoch {task.epoch}): means "
        + ", ".join(f"{k} {v:.3f}" for k, v in manifest["means"].items())
        + f", switch {manifest['switch']}, {manifest['changed_users']:,} users changed, {wall:.1f}s",
    )
    return storage.read_manifest(task.layout.round(task.round_idx, task.rounds))


def build_round0(run: str, cfg: Config) -> dict:
    """Writes RUN/knowledge/pos (P+) and RUN/knowledge/round=0 (v = 0, d = NaN, T = g of the E1 states).

    Holds RUN's lease (`hetcomp_dist.lease`) throughout.

    Returns:
        The round manifest: {"round": 0, "epoch": 0, "teachers": [...], "means": {name: 0.0},
        "switch": False, ...}. A committed round 0 of the same inputs is returned as is.
    """
    with RunLease(run, cfg.pipeline):
        return _build_round0(run, cfg)


def _build_round0(run: str, cfg: Config) -> dict:
    t0 = time.perf_counter()
    data, names, base = _base(run, cfg)
    h = storage.config_hash("round", 0, base)
    h_pos = storage.config_hash("pos", base, cfg.knowledge.pos_k)
    layout = RunLayout(run)
    done = storage.stage_is_done(layout.round(0), h)
    if done is not None and storage.stage_is_done(layout.pos, h_pos) is not None:
        log(STAGE, f"round 0 is up to date (config {h}); skipping")
        return done
    storage.begin_stage(layout.knowledge)  # clears every later round: they depend on round 0
    storage.begin_stage(layout.pos)
    storage.begin_stage(layout.round(0))
    task = RoundTask(run, cfg, names, data, 0, state_cache=cfg.knowledge.cache_states)
    distributed = _distributed(cfg, data["n_users"])
    stats = map_shards("round0", task, distributed)
    storage.write_manifest(
        layout.pos,
        {
            "config_hash": h_pos,
            "pos_k": cfg.knowledge.pos_k,
            "teachers": list(names),
            "n_users": data["n_users"],
            "shard_size": data["shard_size"],
        },
    )
    return _commit(run, cfg, task, stats, h, t0, distributed, {"state_cache": task.state_cache})


def _check_embeddings(emb_path: str, data: dict, metric: str) -> str:
    """Checks a student's embeddings file for this run; returns their `embeddings_digest`."""
    if metric not in ("ip", "l2"):
        raise InputError(f"metric={metric!r}", "must be ip or l2")
    emb = storage.read_npz(emb_path)
    for key, n in (("user", data["n_users"]), ("item", data["n_items"])):
        a = emb.get(key)
        if a is None or a.ndim != 2 or a.shape[0] != n or not np.issubdtype(a.dtype, np.floating):
            raise InputError(
                emb_path,
                f"needs a float array `{key}` of shape ({n}, d), got "
                f"{None if a is None else (a.shape, str(a.dtype))}",
                "save numpy.savez(path, user=U, item=I) with the student's embeddings",
            )
        if not np.all(np.isfinite(a)):
            raise InputError(emb_path, f"`{key}` has NaN or infinite values", "check the student's training")
    if emb["user"].shape[1] != emb["item"].shape[1]:
        raise InputError(emb_path, "user and item embeddings differ in dimension")
    return embeddings_digest(emb)


def dkc_round(
    run: str,
    cfg: Config,
    round_idx: int,
    epoch: int,
    emb_path: str,
    metric: str = "ip",
    rounds: str | None = None,
) -> dict:
    """DKC round `round_idx` >= 1 at student epoch `epoch`; round 1 is the first call (nobody moves).

    Takes no lease of RUN: it runs inside a student's training, whose driver (another process) holds
    it. A caller outside a training holds `hetcomp_dist.lease.RunLease` itself, as the ``knowledge``
    command does.

    Args:
        run: the run folder (local or URI).
        cfg: the config (knowledge section: D@K, move rule, threshold; eval: the FAISS index).
        round_idx: r >= 1; round r-1 must be committed.
        epoch: the student epoch e (threshold alpha * decay^floor(e/p)).
        emb_path: .npz with float arrays `user` (n_users, d) and `item` (n_items, d).
        metric: "ip" (dot product) or "l2" (negative squared distance) for the student's top-d_k.
        rounds: the folder of this student's rounds >= 1 (the trainer passes the student's own, so
            students training side by side on one run keep separate rounds); None = RUN/knowledge.
            Round 0 is always RUN/knowledge/round=0.

    Returns:
        The round manifest: round, epoch, teachers, means (mean state index per teacher), switch, ...
        A committed round of the same inputs is returned as is.
    """
    if not isinstance(round_idx, (int, np.integer)) or round_idx < 1:
        raise InputError(f"round_idx={round_idx!r}", "DKC rounds start at 1", "use build_round0 for round 0")
    if epoch < 0:
        raise InputError(f"epoch={epoch}", "must be >= 0")
    t0 = time.perf_counter()
    data, names, base = _base(run, cfg)
    prev_hash = _chain(run, cfg, base, round_idx - 1, rounds)
    digest = _check_embeddings(emb_path, data, metric)
    h = _round_hash(cfg, round_idx, prev_hash, epoch, digest, metric)
    layout = RunLayout(run)
    done = storage.stage_is_done(layout.round(round_idx, rounds), h)
    if done is not None:
        log(STAGE, f"round {round_idx} is up to date (config {h}); skipping")
        return done
    prev = storage.read_manifest(layout.round(round_idx - 1, rounds))
    if prev["switch"]:
        raise InputError(
            layout.round(round_idx - 1, rounds),
            "the switch fired at this round: DKC has stopped for good",
            "train on the last round's targets (L_F) instead of calling dkc_round",
        )
    j = round_idx + 1
    while storage.exists(layout.round(j, rounds)):  # later rounds were built on an older version of this one
        storage.delete_dir(layout.round(j, rounds))
        j += 1
    storage.begin_stage(layout.round(round_idx, rounds))
    state_cache = bool(storage.read_manifest(layout.round(0)).get("state_cache", False))  # checked by _chain
    task = RoundTask(run, cfg, names, data, int(round_idx), int(epoch), emb_path, metric, rounds, state_cache)
    distributed = _distributed(cfg, data["n_users"])
    stats = map_shards("dkc", task, distributed)
    return _commit(
        run, cfg, task, stats, h, t0, distributed, {"first_call": round_idx == 1, "emb_digest": digest}
    )


def load_targets(
    run: str, round_idx: int, lo: int, hi: int, rounds: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and P+ of users [lo, hi) of a committed round (`rounds`: see `RunLayout.round`).

    Returns:
        (targets (hi-lo, K) int32, pos (hi-lo, pos_k) int32), -1 padded.
    """
    layout = RunLayout(run)
    m = storage.read_manifest(layout.round(round_idx, rounds))
    if m is None:
        raise InputError(
            layout.round(round_idx, rounds),
            "knowledge round not committed",
            "run build_round0 / dkc_round first",
        )
    targets = read_dense(layout.round(round_idx, rounds), lo, hi, m["K"], m, "targets")
    return targets, read_dense(layout.pos, lo, hi, m["pos_k"], m)
