"""Every user's top-K items from a trained student, in the run's raw ids (``hetcomp-dist recommend``).

Output: Parquet sharded by user range like every per-user dataset of a run (shard ``s`` holds users of
dense ids ``[s*S, (s+1)*S)``; with ``--users`` only those listed), columns ``user`` (raw id), ``items``
(list of raw ids, best first), ``scores`` (list<float32>, the student's scores) and ``cold_start``
(true for a raw user id the run does not know, answered with the most popular allowed items);
``_manifest.json`` last. By default a user's every interaction (train ∪ valid ∪ test) is excluded.

Below ``eval.distributed_min_users`` users the shards are computed in this process; from there on as a
Ray Data map over the shards, one FAISS index per actor. Either way each shard is written under a
temporary name and renamed, and bad input fails before anything is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hetcomp_dist import storage
from hetcomp_dist.config import STUDENT_METHODS, STUDENT_MODELS, Config, EvalConfig, to_dict
from hetcomp_dist.data.dataset import CSR, load_manifest, load_range, union
from hetcomp_dist.data.idmap import IdMap, load_idmap, read_raw_ids
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import Progress, log, peak_rss_gib
from hetcomp_dist.serving import topk

STAGE = "recommend"
COLD_START = ("error", "popular")


@dataclass(frozen=True)
class Request:
    """What to recommend.

    Attributes:
        student: ``<method>-<model>``, a finished student of the run (e.g. ``hetcomp-mf``).
        k: items per user.
        users_file: raw user ids to answer (text, one per line, or Parquet); None = every user.
        out: output folder or URI; None = ``RUN/recommend/<student>``.
        include_seen: keep the items a user interacted with.
        exclude_file: raw item ids never recommended.
        only_file: raw item ids that alone may be recommended.
        cold_start: "error" (unknown user ids fail) or "popular" (they get the most popular items).
        distributed: None = from ``eval.distributed_min_users``; True / False forces it.
    """

    student: str = "hetcomp-mf"
    k: int = 100
    users_file: str | None = None
    out: str | None = None
    include_seen: bool = False
    exclude_file: str | None = None
    only_file: str | None = None
    cold_start: str = "error"
    distributed: bool | None = None


@dataclass(frozen=True)
class Plan:
    """Everything a shard task needs, checked in the driver; small (paths and id arrays)."""

    run: str
    out: str
    student_dir: str
    metric: str
    k: int
    include_seen: bool
    eval: EvalConfig
    allowed: np.ndarray | None  # sorted dense item ids that may be recommended; None = all
    shards: tuple[int, ...]
    selected: dict[int, np.ndarray] | None  # shard -> sorted dense user ids; None = every user


# ------------------------------------------------------------------------------------------ checks
def student_folder(run: str, student: str) -> tuple[str, dict]:
    """(folder, manifest) of a finished student ``<method>-<model>`` of RUN, else an InputError."""
    method, _, model = student.partition("-")
    if method not in STUDENT_METHODS or model not in STUDENT_MODELS:
        raise InputError(
            f"--student {student}",
            "not a student name",
            f"use <method>-<model>, method one of {', '.join(STUDENT_METHODS)}, model one of "
            f"{', '.join(STUDENT_MODELS)} (e.g. hetcomp-mf)",
        )
    layout = RunLayout(run)
    folder = layout.student(method, model)
    manifest = storage.read_manifest(folder)
    if manifest is None or not storage.exists(layout.student_embeddings(folder)):
        raise InputError(
            folder,
            f"the run has no finished student {student}",
            f"train it first: hetcomp-dist distill --run {run} --method {method} --student {model}",
        )
    return folder, manifest


def student_vectors(run: str, folder: str, data: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """(user (n_users, d), item (n_items, d) float32, metric) of a finished student's emb.npz."""
    layout = RunLayout(run)
    path = layout.student_embeddings(folder)
    emb = storage.read_npz(path)
    user, item = emb.get("user"), emb.get("item")
    if user is None or item is None or user.shape != (data["n_users"], item.shape[1]):
        raise InputError(path, "not the student's (user, item) vectors of this run", "retrain the student")
    if item.shape[0] != data["n_items"]:
        raise InputError(path, f"{item.shape[0]} item vectors for {data['n_items']} items", "retrain it")
    model = storage.read_json(layout.student_summary(folder))
    return user.astype(np.float32), item.astype(np.float32), str(model.get("metric", "ip"))


def allowed_items(req: Request, items: IdMap) -> np.ndarray | None:
    """Sorted dense ids the business rules allow (None: every item)."""
    if req.only_file is None and req.exclude_file is None:
        return None
    fix = "list raw item ids of this run (RUN/data/maps/items.parquet)"
    keep = np.ones(items.n, bool)
    if req.only_file is not None:
        keep[:] = False
        only = read_raw_ids(req.only_file, "items", items.type)
        keep[items.dense_or_fail(only, req.only_file, fix)] = True
    if req.exclude_file is not None:
        ex = read_raw_ids(req.exclude_file, "items", items.type)
        keep[items.dense_or_fail(ex, req.exclude_file, fix)] = False
    return np.nonzero(keep)[0]


def selected_users(req: Request, users: IdMap) -> tuple[np.ndarray | None, pa.Array | None]:
    """(sorted unique dense ids asked for, or None for every user; raw ids the run does not know)."""
    if req.users_file is None:
        return None, None
    raw = read_raw_ids(req.users_file, "users", users.type)
    dense = users.to_dense(raw)
    unknown = raw.filter(pa.array(dense < 0))
    if len(unknown) and req.cold_start == "error":
        users.dense_or_fail(raw, req.users_file, "list known user ids, or pass --cold-start popular")
    return np.unique(dense[dense >= 0]), pc.unique(unknown) if len(unknown) else None


def _hash(plan: Plan, student_manifest: dict, data: dict, req: Request, cold: pa.Array | None) -> str:
    sel = None if plan.selected is None else [plan.selected[s].tolist() for s in plan.shards]
    return storage.config_hash(
        "recommend",
        student_manifest.get("config_hash"),
        data.get("config_hash"),
        plan.k,
        plan.include_seen,
        plan.eval.index,
        None if plan.allowed is None else plan.allowed.tolist(),
        sel,
        None if cold is None else cold.to_pylist(),
    )


# ------------------------------------------------------------------------------------------ shards
class ShardRecommender:
    """Top-K of the users of one shard at a time; holds the student's vectors and one index.

    Also the Ray Data actor class: the index is built once per actor in ``__init__``.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.data = load_manifest(plan.run)
        self.user_vecs, items, _ = student_vectors(plan.run, plan.student_dir, self.data)
        self.item_vecs = items if plan.allowed is None else items[plan.allowed]
        self.index = topk.build_search_index(self.item_vecs, plan.metric, plan.eval)
        self.users = load_idmap(plan.run, "users", self.data)
        self.items = load_idmap(plan.run, "items", self.data)

    def __call__(self, batch: dict) -> dict:
        """Ray Data entry: writes the shards of `batch` (column ``shard``); returns their row counts."""
        rows = [self.write_shard(int(s)) for s in batch["shard"]]
        rss = np.full(len(rows), peak_rss_gib())
        return {"shard": np.asarray(batch["shard"]), "rows": np.asarray(rows, np.int64), "peak_rss_gib": rss}

    def exclusions(self, lo: int, hi: int, rows: np.ndarray) -> CSR:
        """Per selected user (rows relative to lo), the index rows it must not get."""
        n = len(rows)
        if self.plan.include_seen:
            return CSR(np.zeros(n + 1, np.int64), np.zeros(0, np.int32))
        parts = [load_range(self.plan.run, split, lo, hi, self.data) for split in ("train", "valid", "test")]
        seen = union(*parts).take(rows)
        if self.plan.allowed is None:
            return seen
        pos = np.searchsorted(self.plan.allowed, seen.items)
        inside = (pos < len(self.plan.allowed)) & (
            self.plan.allowed[np.minimum(pos, len(self.plan.allowed) - 1)] == seen.items
        )
        counts = np.bincount(np.repeat(np.arange(n), seen.lengths())[inside], minlength=n)
        off = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=off[1:])
        return CSR(off, pos[inside].astype(np.int32))

    def shard_table(self, s: int) -> pa.Table:
        """The output rows of shard `s`: (user, items, scores, cold_start)."""
        plan, S = self.plan, int(self.data["shard_size"])
        lo, hi = storage.shard_range(s, S, int(self.data["n_users"]))
        users = np.arange(lo, hi) if plan.selected is None else plan.selected[s]
        ex = self.exclusions(lo, hi, users - lo)
        ids = np.empty((len(users), plan.k), np.int32)
        scores = np.empty((len(users), plan.k), np.float32)
        step = max(1, plan.eval.batch_size)
        for b in range(0, len(users), step):
            e = min(b + step, len(users))
            o0, o1 = ex.offsets[b], ex.offsets[e]
            ids[b:e], scores[b:e] = topk.topk(
                self.index,
                self.item_vecs,
                plan.metric,
                self.user_vecs[users[b:e]],
                plan.k,
                ex.offsets[b : e + 1] - o0,
                ex.items[o0:o1],
            )
        dense_items = (
            ids if plan.allowed is None else np.where(ids >= 0, plan.allowed[np.maximum(ids, 0)], -1)
        )
        return output_table(self.users.to_raw(users), dense_items, scores, self.items, cold=False)

    def write_shard(self, s: int) -> int:
        table = self.shard_table(s)
        storage.write_table_atomic(storage.shard_path(self.plan.out, s), table)
        return table.num_rows


def output_table(
    raw_users: pa.Array, dense_items: np.ndarray, scores: np.ndarray, items: IdMap, cold: bool
) -> pa.Table:
    """The output schema from (B,) raw user ids and (B, k) dense item ids (-1 padded) with scores."""
    keep = dense_items >= 0
    lengths = keep.sum(1)
    off = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=off[1:])
    item_raw = items.to_raw(dense_items[keep])
    return pa.table(
        {
            "user": raw_users,
            "items": pa.ListArray.from_arrays(pa.array(off), item_raw),
            "scores": pa.ListArray.from_arrays(pa.array(off), pa.array(scores[keep], pa.float32())),
            "cold_start": pa.array(np.full(len(lengths), cold)),
        }
    )


def popular_items(run: str, data: dict, allowed: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k dense ids, their share of train interactions) of the most popular allowed items (ties: id)."""
    counts = np.zeros(int(data["n_items"]), np.int64)
    S, n = int(data["shard_size"]), int(data["n_users"])
    for s in range(storage.n_shards(n, S)):
        lo, hi = storage.shard_range(s, S, n)
        counts += np.bincount(load_range(run, "train", lo, hi, data).items, minlength=len(counts))
    cand = np.arange(len(counts)) if allowed is None else allowed
    order = cand[np.lexsort((cand, -counts[cand]))][:k]
    return order, (counts[order] / max(1, int(data["n_train"]))).astype(np.float32)


# ------------------------------------------------------------------------------------------ driver
def plan_request(run: str, cfg: Config, req: Request) -> tuple[Plan, dict, pa.Array | None]:
    """Checks every input and returns (plan, student manifest, unknown raw user ids); writes nothing."""
    if req.cold_start not in COLD_START:
        raise InputError("--cold-start", f"{req.cold_start!r} is not one of {', '.join(COLD_START)}")
    data = load_manifest(run)
    folder, smanifest = student_folder(run, req.student)
    _, item_vecs, metric = student_vectors(run, folder, data)
    items, users = load_idmap(run, "items", data), load_idmap(run, "users", data)
    allowed = allowed_items(req, items)
    n_allowed = items.n if allowed is None else len(allowed)
    if not 1 <= req.k <= n_allowed:
        raise InputError("--k", f"{req.k} is not in [1, {n_allowed}] (the items that may be recommended)")
    dense, cold = selected_users(req, users)
    S, n = int(data["shard_size"]), int(data["n_users"])
    if dense is None:
        shards, selected = tuple(range(storage.n_shards(n, S))), None
    else:
        by = dense // S
        shards = tuple(int(s) for s in np.unique(by))
        selected = {s: dense[by == s] for s in shards}
    out = req.out or RunLayout(run).recommend(req.student)
    plan = Plan(run, out, folder, metric, req.k, req.include_seen, cfg.eval, allowed, shards, selected)
    return plan, smanifest, cold


def _prepare_out(out: str, h: str) -> dict | None:
    """The finished output when it matches `h`; else clears a folder of ours (refuses a foreign one)."""
    done = storage.stage_is_done(out, h)
    if done is not None:
        return done
    if storage.exists(out):
        m = storage.read_manifest(out)
        names = [p.rsplit("/", 1)[-1] for p in storage.list_files(out, "")]
        ours = m is not None and m.get("stage") == STAGE
        if not ours and any(not (n.startswith("shard-") or n.startswith(".")) for n in names):
            raise InputError(out, "exists and is not a recommend output", "choose another --out or remove it")
    storage.begin_stage(out)
    return None


def recommend(run: str, cfg: Config, req: Request) -> dict:
    """Writes the recommendations of `req` (see the module doc); returns the output's manifest.

    Holds RUN's lease (`hetcomp_dist.lease`) throughout, wherever the output goes: it reads the RUN.
    """
    with RunLease(run, cfg.pipeline):
        return _recommend(run, cfg, req)


def _recommend(run: str, cfg: Config, req: Request) -> dict:
    t0 = time.perf_counter()
    plan, smanifest, cold = plan_request(run, cfg, req)
    data = load_manifest(run)
    h = _hash(plan, smanifest, data, req, cold)
    done = _prepare_out(plan.out, h)
    if done is not None:
        log(STAGE, f"{plan.out}: up to date, skipped")
        return done
    n_users = (
        sum(len(v) for v in plan.selected.values()) if plan.selected is not None else int(data["n_users"])
    )
    distributed = (
        req.distributed if req.distributed is not None else n_users >= cfg.eval.distributed_min_users
    )
    log(
        STAGE,
        f"{req.student}: top-{plan.k} of {n_users:,} users over {len(plan.shards)} shard(s)"
        + (" as a Ray Data map" if distributed else " in-process"),
    )
    rows, worker_rss = _run_ray(plan, cfg) if distributed else (_run_local(plan), 0.0)
    files = {storage.shard_name(s): r for s, r in rows.items()}
    if cold is not None:
        top, share = popular_items(run, data, plan.allowed, plan.k)
        items = load_idmap(run, "items", data)
        dense = np.repeat(top[None, :], len(cold), 0)
        table = output_table(cold, dense, np.repeat(share[None, :], len(cold), 0), items, cold=True)
        storage.write_table_atomic(storage.join(plan.out, "cold-start.parquet"), table)
        files["cold-start.parquet"] = table.num_rows
        log(STAGE, f"{len(cold):,} unknown user id(s) answered with the {plan.k} most popular items")
    wall = time.perf_counter() - t0
    manifest = {
        "stage": STAGE,
        "config_hash": h,
        "student": req.student,
        "student_hash": smanifest.get("config_hash"),
        "data_hash": data.get("config_hash"),
        "metric": plan.metric,
        "k": plan.k,
        "index": cfg.eval.index,
        "include_seen": plan.include_seen,
        "n_users": int(sum(rows.values())) + (0 if cold is None else len(cold)),
        "n_cold_start": 0 if cold is None else len(cold),
        "n_items_allowed": int(len(plan.allowed)) if plan.allowed is not None else int(data["n_items"]),
        "distributed": bool(distributed),
        "shard_size": int(data["shard_size"]),
        "files": files,
        "wall_s": round(wall, 2),
        "users_per_s": round(n_users / max(wall, 1e-9), 1),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "worker_peak_rss_gib": round(worker_rss, 3),
    }
    storage.write_manifest(plan.out, manifest, to_dict(cfg))
    log(STAGE, f"committed {plan.out}: {manifest['n_users']:,} users in {wall:.1f}s")
    return storage.read_manifest(plan.out)


def _run_local(plan: Plan) -> dict[int, int]:
    worker = ShardRecommender(plan)
    total = sum(len(v) for v in plan.selected.values()) if plan.selected is not None else None
    progress = Progress(STAGE, total, "users")
    rows = {}
    for s in plan.shards:
        rows[s] = worker.write_shard(s)
        progress.update(rows[s])
    progress.close()
    return rows


def _run_ray(plan: Plan, cfg: Config) -> tuple[dict[int, int], float]:
    import ray

    if not ray.is_initialized():
        ray.init()
    ds = ray.data.from_items([{"shard": s} for s in plan.shards], override_num_blocks=len(plan.shards))
    from hetcomp_dist.resources import cluster_view, task_pool

    # the pool starts with the actors the nodes alive now hold and grows to the cluster's capacity
    low, high = task_pool(len(plan.shards), 1.0, cluster_view(), cfg.eval.max_tasks)
    out = ds.map_batches(
        ShardRecommender,
        fn_constructor_kwargs={"plan": plan},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        num_cpus=1,
        max_restarts=2,  # bounded: a shard that kills its actor every time fails the job, never hangs it
        max_task_retries=2,
    )
    done = out.take_all()
    return {int(r["shard"]): int(r["rows"]) for r in done}, max(float(r["peak_rss_gib"]) for r in done)


def read_recommendations(folder: str) -> pa.Table:
    """Every row of a committed recommend output (shards in order, then cold-start rows)."""
    m = storage.read_manifest(folder)
    if m is None or m.get("stage") != STAGE:
        raise InputError(folder, "not a finished recommend output", "run hetcomp-dist recommend first")
    tables = [storage.read_table(storage.join(folder, name)) for name in sorted(m["files"])]
    return pa.concat_tables(tables)
