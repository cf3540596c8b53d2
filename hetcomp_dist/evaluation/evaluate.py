"""The one evaluation function of the project: Recall/NDCG@{10,50} under the paper's protocol.

Protocol (METHOD.md §1): the **valid** ranking excludes train(u) ∪ test(u), the **test** ranking
excludes train(u) ∪ valid(u); only users with non-empty valid and test lists are evaluated.

Both protocols come from ONE candidate search per user: the top ``K + |train ∪ valid ∪ test|`` items
with no exclusion contain, for either protocol, the top K items that survive its exclusion set (at
most that many candidates can be excluded). So each protocol's list is the first K candidates not in
its exclusion set -- no second search. Users are grouped by the size of their exclusion set (powers
of two) so one heavy user does not widen the search of a whole batch. The exclusion sets travel as one
bit-coded CSR (train 1, valid 2, test 4; `protocol_sets`) into compiled per-row kernels.

With ``EvalConfig.index = "blocked"`` (`faiss_exact.BlockedFlatIndex`) that one search runs over FAISS
flat indexes of norm-sorted item blocks and stops per user once no unvisited item can enter its lists
(exact; float64 order, ties by item id). With ``"pruned"`` (exact norm-pruned torch scan,
`retrieval.PrunedIndex`) there is no wide candidate search: one top-K search excludes train ∪ valid ∪
test, and each protocol merges its own held-out items back in by score (`protocol_lists_pruned`).

Two scorers: FAISS over embeddings (`evaluate_embeddings`, inner product or L2) and any model's
batched full-catalogue scores (`evaluate_scorer`); and any ranker that answers top-k queries with
exclusions (`evaluate_topk`: one query per protocol, in-process). Small runs are evaluated in-process;
runs with at least ``EvalConfig.distributed_min_users`` users as a Ray Data map over shard ids (same
numbers).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import EvalConfig
from hetcomp_dist.data.dataset import CSR, load_manifest, load_shard, read_lists, union
from hetcomp_dist.errors import InputError
from hetcomp_dist.evaluation import kernels
from hetcomp_dist.evaluation.faiss_exact import BlockedFlatIndex
from hetcomp_dist.evaluation.metrics import MetricSums, recall_ndcg
from hetcomp_dist.evaluation.retrieval import PAD, PrunedIndex, _encode, grouped_search, index_for
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import Progress

STAGE = "evaluate"
SCORE_BLOCK = 1 << 25  # scorer path: at most this many (user, item) scores per batch (128 MiB float32)
ScoreFn = Callable[[np.ndarray], torch.Tensor]
BITS = {"train": 1, "valid": 2, "test": 4}  # bit codes of the exclusion sets
DROPS = {"valid": ("train", "test"), "test": ("train", "valid")}  # what each protocol excludes
_DEFAULT_EVAL = EvalConfig()  # the default `cfg` (frozen, so one shared instance is safe)


# ------------------------------------------------------------------------------ pure per-batch math
def protocol_sets(
    train: CSR, valid: CSR, test: CSR, splits: Iterable[str] = ("valid", "test")
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The items the protocols of `splits` exclude, as one bit-coded CSR over the rows, and their masks.

    Args:
        train, valid, test: CSRs over the same B rows.

    Returns:
        offsets (B+1,) int64, items int64, bits uint8 (train 1, valid 2, test 4), grouped by row; masks
        (P,) uint8, one per split: a protocol drops an item whose bits & mask != 0.
    """
    splits = tuple(splits)
    sets = {"train": train, "valid": valid, "test": test}
    used = [name for name in BITS if any(name in DROPS[s] for s in splits)]
    lengths = [sets[name].lengths() for name in used]
    offsets = np.zeros(train.n + 1, np.int64)
    np.cumsum(sum(lengths), out=offsets[1:])
    items = np.empty(offsets[-1], np.int64)
    bits = np.empty(offsets[-1], np.uint8)
    before = np.zeros(train.n, np.int64)  # entries of earlier sets already placed in each row
    for name, n_r in zip(used, lengths):
        c = sets[name]
        dest = np.repeat(offsets[:-1] + before - c.offsets[:-1], n_r) + np.arange(len(c.items))
        items[dest], bits[dest] = c.items, BITS[name]
        before += n_r
    masks = np.array([BITS[a] | BITS[b] for a, b in (DROPS[s] for s in splits)], np.uint8)
    return offsets, items, bits, masks


def protocol_lists(
    cand: np.ndarray,
    train: CSR,
    valid: CSR,
    test: CSR,
    k: int,
    n_items: int,
    splits: Iterable[str] = ("valid", "test"),
) -> dict[str, np.ndarray]:
    """Per-protocol top-k lists from one unexcluded candidate ranking.

    Args:
        cand: (B, C) item ids best first (PAD allowed), with C >= k + |train ∪ valid ∪ test| per row
            or the whole catalogue.
        train, valid, test: CSRs over the same B rows.
        k: list length.

    Returns:
        {split: (B, k) int32}: "valid" excludes train ∪ test, "test" excludes train ∪ valid.
    """
    splits = tuple(splits)
    offsets, items, bits, masks = protocol_sets(train, valid, test, splits)
    out = np.empty((len(splits), len(cand), k), np.int32)
    kernels.first_k_kept_sets(
        np.ascontiguousarray(cand), offsets, items, bits, masks, k, out, np.zeros(n_items, np.uint8)
    )
    return dict(zip(splits, out))


def protocol_lists_blocked(
    index: BlockedFlatIndex,
    q: np.ndarray,
    train: CSR,
    valid: CSR,
    test: CSR,
    k: int,
    splits: Iterable[str] = ("valid", "test"),
) -> dict[str, np.ndarray]:
    """Per-protocol top-k lists from one exact search of a `BlockedFlatIndex` (see `protocol_lists`)."""
    splits = tuple(splits)
    return dict(zip(splits, index.search_sets(q, k, *protocol_sets(train, valid, test, splits))))


def protocol_lists_pruned(
    index: PrunedIndex,
    q: np.ndarray,
    train: CSR,
    valid: CSR,
    test: CSR,
    k: int,
    splits: Iterable[str] = ("valid", "test"),
) -> dict[str, np.ndarray]:
    """Per-protocol top-k lists from one exact search that excludes train ∪ valid ∪ test.

    The protocol "valid" (excludes train ∪ test) ranks the items of that search plus the user's valid
    items, so its top k is the top k of (that search's k) ∪ valid -- likewise for "test". Those items
    are scored on the index's scale and merged in (score descending, then item id). No k + |excluded|
    candidate search: the pruned scan stops as early as for a plain top-k.

    Args:
        index: a `PrunedIndex`.
        q: (B, d) user vectors.
        train, valid, test: CSRs over the same B rows.
        k: list length (>= 1).

    Returns:
        {split: (B, k) int32}, best first, PAD-filled.
    """
    n = index.ntotal
    ex = union(train, valid, test)
    top, sc = index.search_excluding(q, k, ex.offsets, ex.items, return_scores=True)
    kth = sc[:, k - 1]  # -inf when the row has fewer than k
    out = {}
    for split in splits:
        back, other = (valid, test) if split == "valid" else (test, valid)
        keys = np.unique(_pairs(back, n))
        keys = keys[
            ~np.isin(keys, np.concatenate([_pairs(train, n), _pairs(other, n)]))
        ]  # disjoint by construction
        rows, items = keys // (n + 1), (keys % (n + 1) - 1).astype(np.int32)
        s = index.pair_scores(q, rows, items)
        enter = s >= kth[rows]  # the rest rank below the row's k-th item
        rows, items, s = rows[enter], items[enter], s[enter]
        lst = top.copy()
        hit = np.unique(rows)
        if len(hit):
            r = np.concatenate([np.repeat(np.arange(len(hit)), k), np.searchsorted(hit, rows)])
            i = np.concatenate([top[hit].ravel(), items])
            o = np.lexsort((i, -np.concatenate([sc[hit].ravel(), s]), r))  # by row, score desc, id
            r, i = r[o], i[o]
            rank = np.arange(len(r)) - np.searchsorted(r, r)
            sel = rank < k
            merged = np.full((len(hit), k), PAD, np.int32)
            merged[r[sel], rank[sel]] = i[sel]
            lst[hit] = merged
        out[split] = lst
    return out


def _pairs(c: CSR, n_items: int) -> np.ndarray:
    """(nnz,) int64 keys of a CSR's (row, item) pairs (see `retrieval._encode`)."""
    return _encode(np.repeat(np.arange(c.n), c.lengths()), c.items, n_items)


def candidates_scores(scores: torch.Tensor, k: int, train: CSR, n_excl: np.ndarray) -> np.ndarray:
    """(B, C) candidates of a score block: train masked to -inf, top k + max |valid ∪ test| (cheap)."""
    B, n_items = scores.shape
    s = scores.detach().float().clone()
    rows = torch.from_numpy(np.repeat(np.arange(B), train.lengths()))
    s[rows, torch.from_numpy(train.items.astype(np.int64))] = float("-inf")
    extra = int((n_excl - train.lengths()).max(initial=0))
    kk = min(k + extra, n_items)
    val, idx = torch.topk(s, kk, dim=1)
    cand = idx.to(torch.int32).numpy()
    cand[~torch.isfinite(val).numpy()] = PAD
    return cand


# --------------------------------------------------------------------------------- one shard range
def _shard_parts(run: str, m: dict, s: int, lo: int, hi: int) -> tuple[CSR, CSR, CSR]:
    """train / valid / test of users [lo, hi) inside shard s."""
    parts = []
    for split in ("train", "valid", "test"):
        c = load_shard(run, split, s, m)
        parts.append(c.rows(lo - c.lo, hi - c.lo))
    return parts[0], parts[1], parts[2]


def _eval_range(
    run: str,
    m: dict,
    s: int,
    lo: int,
    hi: int,
    *,
    index=None,
    user_emb=None,
    score_fn=None,
    cfg: EvalConfig,
    splits: tuple[str, ...],
    keep_lists: bool = False,
) -> tuple[dict, dict]:
    """Metric sums (and optionally the (hi-lo, K) lists, PAD for non-evaluated users) of users [lo, hi)."""
    train, valid, test = _shard_parts(run, m, s, lo, hi)
    k = max(cfg.ks)
    n_items = m["n_items"]
    sums = {split: MetricSums(cfg.ks) for split in splits}
    lists = {split: np.full((hi - lo, k), PAD, np.int32) for split in splits} if keep_lists else {}
    gt = {"valid": valid, "test": test}
    evaluated = np.ones(hi - lo, bool)
    for split in splits:
        evaluated &= gt[split].lengths() > 0
    ev_rows = np.nonzero(evaluated)[0]
    batch = cfg.batch_size if score_fn is None else max(16, min(cfg.batch_size, SCORE_BLOCK // n_items))
    for b0 in range(0, len(ev_rows), batch):
        rows = ev_rows[b0 : b0 + batch]
        tr, va, te = train.take(rows), valid.take(rows), test.take(rows)
        n_excl = tr.lengths() + va.lengths() + te.lengths()
        if score_fn is not None:
            with torch.no_grad():
                scores = score_fn(rows + lo)
            groups = [(np.arange(len(rows)), candidates_scores(scores, k, tr, n_excl))]
        elif isinstance(index, BlockedFlatIndex):
            groups = [
                (
                    np.arange(len(rows)),
                    protocol_lists_blocked(index, user_emb[rows + lo], tr, va, te, k, splits),
                )
            ]
        elif isinstance(index, PrunedIndex):  # exact per-protocol lists, no wide candidate search
            groups = [
                (
                    np.arange(len(rows)),
                    protocol_lists_pruned(index, user_emb[rows + lo], tr, va, te, k, splits),
                )
            ]
        else:
            groups = grouped_search(index, user_emb[rows + lo], k, n_excl)
        for g, cand in groups:
            got = (
                cand
                if isinstance(cand, dict)
                else protocol_lists(cand, tr.take(g), va.take(g), te.take(g), k, n_items, splits)
            )
            for split, top in got.items():
                g_gt = gt[split].take(rows[g])
                sums[split].add(recall_ndcg(top, g_gt.offsets, g_gt.items, cfg.ks, n_items))
                if keep_lists:
                    lists[split][rows[g]] = top
    return {split: sm.to_state() for split, sm in sums.items()}, lists


def _ranges(m: dict, users: tuple[int, int] | None) -> list[tuple[int, int, int]]:
    """(shard, lo, hi) pieces of the requested user range."""
    lo_all, hi_all = (0, m["n_users"]) if users is None else users
    if not 0 <= lo_all <= hi_all <= m["n_users"]:
        raise InputError(f"users={users}", f"not a range inside [0, {m['n_users']}]")
    out = []
    for s, lo, hi in storage.iter_shards("", m["n_users"], m["shard_size"]):
        a, b = max(lo, lo_all), min(hi, hi_all)
        if a < b:
            out.append((s, a, b))
    return out


def _check_emb(
    m: dict, user_emb: np.ndarray, item_emb: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray]:
    fix = "save arrays `user` (n_users, d) and `item` (n_items, d) indexed by the run's dense ids"
    for name, arr, n in (("user", user_emb, m["n_users"]), ("item", item_emb, m["n_items"])):
        if arr.ndim != 2 or arr.shape[0] != n:
            raise InputError(
                f"{where}: array {name!r}", f"shape {arr.shape} does not match the run ({n} {name}s)", fix
            )
        if not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"{where}: array {name!r}", f"dtype {arr.dtype} is not numeric", fix)
    if user_emb.shape[1] != item_emb.shape[1]:
        raise InputError(where, f"user dim {user_emb.shape[1]} != item dim {item_emb.shape[1]}", fix)
    u = np.ascontiguousarray(user_emb, dtype=np.float32)
    i = np.ascontiguousarray(item_emb, dtype=np.float32)
    if not (np.isfinite(u).all() and np.isfinite(i).all()):
        raise InputError(where, "embeddings contain NaN or inf", "check the model that produced them")
    return u, i


def _finish(states: list[dict], cfg: EvalConfig, splits: tuple[str, ...], with_sums: bool) -> dict:
    out: dict = {}
    total = {split: MetricSums(cfg.ks) for split in splits}
    for st in states:
        for split in splits:
            total[split].merge(MetricSums.from_state(st[split], cfg.ks))
    for split in splits:
        out[split] = total[split].means()
    if with_sums:
        out["sums"] = {split: total[split].to_state() for split in splits}
    return out


def _save_lists(folder: str, s: int, lo: int, lists: dict[str, np.ndarray]) -> None:
    for split, top in lists.items():
        storage.write_table_atomic(
            storage.shard_path(storage.join(folder, split), s),
            storage.user_table(lo, lo + len(top), items=storage.dense_to_list(top)),
        )


# ------------------------------------------------------------------------------------- public API
def evaluate_embeddings(
    run: str,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    metric: str = "ip",
    cfg: EvalConfig = _DEFAULT_EVAL,
    splits: tuple[str, ...] = ("valid", "test"),
    users: tuple[int, int] | None = None,
    save_topk: str | None = None,
    distributed: bool | None = None,
    where: str = "embeddings",
) -> dict:
    """Recall/NDCG of a dot-product (``ip``) or distance (``l2``) model, by exact retrieval (FAISS flat;
    FAISS flat over norm-sorted blocks with ``cfg.index = "blocked"``; the norm-pruned torch scan with
    ``"pruned"``) or approximate (``ivf`` / ``hnsw``).

    Args:
        run: RUN folder/URI with a committed data stage.
        user_emb: (n_users, d); item_emb: (n_items, d), indexed by dense id.
        metric: "ip" (score = u·i) or "l2" (score = -|u - i|²).
        splits: protocols to evaluate.
        users: (lo, hi) restricts to a user range (in-process) and adds "sums" (MetricSums states per
            split) so data-parallel workers can all-reduce.
        save_topk: folder; writes ``<folder>/<split>/shard-*.parquet`` (user, items = the protocol's
            top-max(ks) list, empty for users not evaluated). Whole runs only.
        distributed: force (True) or forbid (False) the Ray Data path; None = by size.

    Returns:
        {"valid": {"R@10", "N@10", "R@50", "N@50"}, "test": {...}} (+ "sums" when `users` is given).
    """
    m = load_manifest(run)
    user_emb, item_emb = _check_emb(m, np.asarray(user_emb), np.asarray(item_emb), where)
    if metric not in ("ip", "l2"):
        raise InputError("--metric", f"{metric!r} is not ip or l2")
    return _evaluate(
        run, m, cfg, tuple(splits), users, save_topk, distributed, emb=(user_emb, item_emb, metric)
    )


def evaluate_scorer(
    run: str,
    score_fn: ScoreFn,
    cfg: EvalConfig = _DEFAULT_EVAL,
    splits: tuple[str, ...] = ("valid", "test"),
    users: tuple[int, int] | None = None,
    save_topk: str | None = None,
    distributed: bool | None = None,
) -> dict:
    """Same as `evaluate_embeddings` for any model: ``score_fn(user_ids (B,)) -> (B, n_items)`` torch
    scores (higher = better), reduced to top-K per batch (never more than (batch, n_items) at once).
    On the Ray path `score_fn` is pickled into the tasks."""
    m = load_manifest(run)
    return _evaluate(run, m, cfg, tuple(splits), users, save_topk, distributed, score_fn=score_fn)


def evaluate_topk(
    run: str,
    topk_fn: Callable[[np.ndarray, int, np.ndarray, np.ndarray], np.ndarray],
    cfg: EvalConfig = _DEFAULT_EVAL,
    splits: tuple[str, ...] = ("valid", "test"),
) -> dict:
    """Same metrics for any ranker that answers top-k queries with exclusions (in-process): each
    protocol's list is one ``topk_fn(user_ids (B,), k, ex_offsets, ex_values) -> (B, k)`` call (best
    first, never an excluded item, PAD padded) with that protocol's exclusion set. For rankers that are
    neither embeddings nor full scores (an approximate index's candidates, rescored exactly)."""
    m = load_manifest(run)
    for split in splits:
        if split not in DROPS:
            raise InputError(f"splits={splits}", f"unknown split {split!r}", "use valid and/or test")
    k = max(cfg.ks)
    sums = {split: MetricSums(cfg.ks) for split in splits}
    prog = Progress(STAGE, m["n_users"])
    for s, lo, hi in _ranges(m, None):
        parts = dict(zip(("train", "valid", "test"), _shard_parts(run, m, s, lo, hi)))
        evaluated = np.ones(hi - lo, bool)
        for split in splits:
            evaluated &= parts[split].lengths() > 0
        ev_rows = np.nonzero(evaluated)[0]
        for b0 in range(0, len(ev_rows), cfg.batch_size):
            rows = ev_rows[b0 : b0 + cfg.batch_size]
            for split in splits:
                ex = union(*(parts[name].take(rows) for name in DROPS[split]))
                top = topk_fn(rows + lo, k, ex.offsets, ex.items)
                gt = parts[split].take(rows)
                sums[split].add(recall_ndcg(top, gt.offsets, gt.items, cfg.ks, m["n_items"]))
        prog.update(hi - lo)
    prog.close()
    return {split: sums[split].means() for split in splits}


def _evaluate(run, m, cfg, splits, users, save_topk, distributed, emb=None, score_fn=None) -> dict:
    for split in splits:
        if split not in ("valid", "test"):
            raise InputError(f"splits={splits}", f"unknown split {split!r}", "use valid and/or test")
    if save_topk and users is not None:
        raise InputError("save_topk", "top-K shards are written for whole runs only", "drop users=...")
    pieces = _ranges(m, users)
    if distributed is None:
        distributed = users is None and m["n_users"] >= cfg.distributed_min_users
    if distributed:
        states = _evaluate_ray(run, m, cfg, splits, pieces, save_topk, emb, score_fn)
    else:
        index = None
        if emb is not None:
            index = index_for(emb[1], emb[2], cfg)
        prog = Progress(STAGE, sum(hi - lo for _, lo, hi in pieces))
        states = []
        for s, lo, hi in pieces:
            st, lists = _eval_range(
                run,
                m,
                s,
                lo,
                hi,
                index=index,
                user_emb=None if emb is None else emb[0],
                score_fn=score_fn,
                cfg=cfg,
                splits=splits,
                keep_lists=bool(save_topk),
            )
            if save_topk:
                _save_lists(save_topk, s, lo, lists)
            states.append(st)
            prog.update(hi - lo)
        prog.close()
    if save_topk:
        storage.write_manifest(
            save_topk,
            {
                "k": max(cfg.ks),
                "splits": list(splits),
                "n_users": m["n_users"],
                "shard_size": m["shard_size"],
                "config_hash": m["config_hash"],
            },
        )
    return _finish(states, cfg, splits, with_sums=users is not None)


def _evaluate_ray(run, m, cfg, splits, pieces, save_topk, emb, score_fn) -> list[dict]:
    """One Ray Data task per shard; embeddings travel once through the object store."""
    import ray

    if not ray.is_initialized():
        ray.init()
    emb_refs = None if emb is None else (ray.put(emb[0]), ray.put(emb[1]), emb[2])
    ds = ray.data.from_items(
        [{"shard": s, "lo": lo, "hi": hi} for s, lo, hi in pieces], override_num_blocks=len(pieces)
    )
    from hetcomp_dist.resources import cluster_view, task_pool

    _, size = task_pool(len(pieces), 1.0, cluster_view(), cfg.max_tasks)  # tasks pend while nodes join
    out = ds.map_batches(
        _ray_eval_shards,
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=size),
        max_retries=3,  # bounded: a shard that kills its worker every time fails evaluation, never hangs it
        fn_kwargs={
            "run": run,
            "m": m,
            "cfg": cfg,
            "splits": splits,
            "emb_refs": emb_refs,
            "score_fn": score_fn,
            "save_topk": save_topk,
        },
    )
    return [json.loads(r["state"]) for r in out.take_all()]


def _ray_eval_shards(
    batch: dict,
    run: str,
    m: dict,
    cfg: EvalConfig,
    splits: tuple[str, ...],
    emb_refs,
    score_fn,
    save_topk: str | None,
) -> dict:
    """Ray Data UDF: metric sums of the shard pieces in `batch` (one row each)."""
    import ray

    index = user_emb = None
    if emb_refs is not None:
        user_emb, item_emb, metric = (ray.get(r) if isinstance(r, ray.ObjectRef) else r for r in emb_refs)
        index = index_for(item_emb, metric, cfg)
    states = []
    for s, lo, hi in zip(batch["shard"], batch["lo"], batch["hi"]):
        st, lists = _eval_range(
            run,
            m,
            int(s),
            int(lo),
            int(hi),
            index=index,
            user_emb=user_emb,
            score_fn=score_fn,
            cfg=cfg,
            splits=splits,
            keep_lists=bool(save_topk),
        )
        if save_topk:
            _save_lists(save_topk, int(s), int(lo), lists)
        states.append(json.dumps(st))
    return {"state": np.array(states, dtype=object)}


def evaluate_lists(
    run: str, lists_dir: str, ks: tuple[int, ...] = (10, 50), splits: tuple[str, ...] = ("valid", "test")
) -> dict:
    """Metrics of precomputed per-protocol lists ``<lists_dir>/<split>/shard-*.parquet`` (user, items
    best first, already excluding the protocol's seen items -- e.g. written by ``save_topk``)."""
    m = load_manifest(run)
    sums = {split: MetricSums(ks) for split in splits}
    for split in splits:
        for s, lo, hi in storage.iter_shards(RunLayout(run).data, m["n_users"], m["shard_size"]):
            lists = read_lists(storage.join(lists_dir, split), "items", lo, hi, m)
            gt = load_shard(run, split, s, m)
            top = storage.csr_to_dense(lists.offsets, lists.items, max(ks))
            ev = gt.lengths() > 0
            g = gt.take(np.nonzero(ev)[0])
            sums[split].add(recall_ndcg(top[ev], g.offsets, g.items, ks, m["n_items"]))
    return {split: sums[split].means() for split in splits}


def evaluate_ranking(
    run: str,
    folder: str,
    ks: tuple[int, ...] = (10, 50),
    splits: tuple[str, ...] = ("valid", "test"),
    refill: tuple[Callable[[np.ndarray, int, np.ndarray, np.ndarray], np.ndarray], int] | None = None,
) -> dict:
    """Metrics of one saved ranking per user, ``<folder>/shard-*.parquet`` (user, items best first: e.g. a
    teacher's state, the top-K items outside the user's train list), under the protocol: each split's
    list is the ranking's first max(ks) items outside that protocol's exclusion set (`protocol_lists`).
    The same numbers as ranking the whole catalogue when the saved lists are long enough to hold them.

    Args:
        refill: (topk_fn, K) for lists saved by a ranker at hand (`evaluate_topk`'s topk_fn) with K items
            each: a row whose saved list is full (K items) yet leaves fewer than max(ks) outside a
            protocol's set (a user with many held-out items near the top) is ranked again by topk_fn with
            that set excluded, so every list is the ranker's own. None: such rows stay short (an imported
            ranking, whose ranker is not at hand).

    Returns:
        {split: {"R@10", "N@10", "R@50", "N@50"}} over the users with non-empty lists of every split.
    """
    m = load_manifest(run)
    k = max(ks)
    topk_fn, saved_k = refill if refill is not None else (None, 0)
    sums = {split: MetricSums(ks) for split in splits}
    for s, lo, hi in storage.iter_shards("", m["n_users"], m["shard_size"]):
        parts = dict(zip(("train", "valid", "test"), _shard_parts(run, m, s, lo, hi)))
        evaluated = np.ones(hi - lo, bool)
        for split in splits:
            evaluated &= parts[split].lengths() > 0
        rows = np.nonzero(evaluated)[0]
        ranked = read_lists(folder, "items", lo, hi, m).take(rows)
        cand = storage.csr_to_dense(ranked.offsets, ranked.items)
        sub = {name: part.take(rows) for name, part in parts.items()}
        tops = protocol_lists(cand, sub["train"], sub["valid"], sub["test"], k, m["n_items"], splits)
        full = ranked.lengths() >= saved_k if topk_fn is not None else None  # saved lists of K items
        for split, top in tops.items():
            short = np.nonzero((top[:, k - 1] == PAD) & full)[0] if full is not None else ()
            if len(short):
                ex = union(*(sub[name].take(short) for name in DROPS[split]))
                top[short] = topk_fn(rows[short] + lo, k, ex.offsets, ex.items)
            g = sub[split]
            sums[split].add(recall_ndcg(top, g.offsets, g.items, ks, m["n_items"]))
    return {split: sums[split].means() for split in splits}


__all__ = [
    "evaluate_embeddings",
    "evaluate_scorer",
    "evaluate_topk",
    "evaluate_lists",
    "evaluate_ranking",
    "protocol_lists",
]
