"""Synthetic teacher trajectories and student embeddings in the exact on-storage layout (tests, benches).

For a run whose data stage exists (e.g. from `hetcomp_dist.data.synth.synthesize`), writes for every
teacher ``RUN/teachers/<name>/state=<e>/shard-*.parquet`` (e = 1..4: top-K items NOT in the user's
train list, best first), ``observed/shard-*.parquet`` (the train items in a teacher's order) and a
``_manifest.json`` carrying the teacher config hash the pipeline expects -- so the knowledge stage
reads them exactly like real trajectories. Optionally also a student embedding .npz.

The structure is chosen to exercise DKC the way a distilled student does: each user's pool of
unobserved candidates is the student's own top-2K (random item and user vectors, exact FAISS search,
train excluded), in that hidden order; teacher x at state s ranks the pool by that order plus noise
that shrinks with s (later states agree more), so the student's top-50 overlaps the teachers' lists
and a drifting student (`perturb_embeddings`) moves the discrepancies both ways. Generated per block
of users, vectorised; memory is one shard.
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.data.dataset import load_manifest, load_shard
from hetcomp_dist.evaluation.retrieval import build_index, search_excluding
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import Progress

N_STATES = 4
NOISE = (40.0, 25.0, 15.0, 8.0)  # per-state noise on pool positions (E1 noisiest)


def _block(rng: np.random.Generator, train, pool_items: np.ndarray, M: int, K: int):
    """Lists (b, M, S, K) and observed orders (M CSR values) for one block of users.

    pool_items: (b, pool) each user's unobserved candidates in the hidden relevance order, -1 padded.
    """
    b, pool = pool_items.shape
    # teacher x, state s: pool positions + noise, the K best; positions are the hidden relevance order
    # (sorted as packed int32 keys: quantised noisy position << jbits | j)
    jbits = max(1, (pool - 1).bit_length())
    scale = ((0.7 + 0.1 * np.arange(M))[:, None] * np.asarray(NOISE)[None, :]).astype(np.float32)  # (M, S)
    # one noise draw per (user, teacher), shrinking with the state: a teacher's states evolve smoothly
    z = rng.standard_normal((b, M, 1, pool), dtype=np.float32)
    noisy = np.arange(pool, dtype=np.float32)[None, None, None, :] + z * scale[None, :, :, None]
    qbits = 30 - jbits
    q = np.clip((noisy + 8 * NOISE[0]) * 4, 0, (1 << qbits) - 2).astype(np.int32)
    q[np.broadcast_to((pool_items < 0)[:, None, None, :], q.shape)] = (1 << qbits) - 1  # pads last
    keys = np.sort((q << jbits) | np.arange(pool, dtype=np.int32), axis=3)[..., :K]
    j = keys & ((1 << jbits) - 1)
    lists = np.take_along_axis(np.broadcast_to(pool_items[:, None, None, :], q.shape), j, axis=3)
    lists = np.where(keys >> jbits == (1 << qbits) - 1, -1, lists)
    # observed: the train items, ordered per teacher by a shared per-item affinity + teacher noise
    rows = train.user_ids() - train.lo
    base = rng.random(len(rows))
    observed = []
    for _ in range(M):
        o = np.lexsort((base + 0.5 * rng.random(len(rows)), rows))
        observed.append(train.items[o])
    return lists.astype(np.int32), observed


def _item_emb(seed: int, n_items: int, dim: int) -> np.ndarray:
    return np.random.default_rng([seed, 1 << 30]).standard_normal((n_items, dim)).astype(np.float32)


def write_trajectory_shard(
    run: str,
    cfg: Config,
    data: dict,
    s: int,
    seed: int = 0,
    pool: int | None = None,
    emb_dim: int = 6,
    block: int = 1024,
) -> np.ndarray:
    """Shard s of every teacher's state and observed folders (RNG (seed, s): any order, any process).

    Returns:
        (n_shard_users, emb_dim) float32 student user vectors of the shard.
    """
    n_users, n_items, S = data["n_users"], data["n_items"], data["shard_size"]
    names, K = list(cfg.teachers.names), cfg.teachers.topk
    M, pool = len(names), pool or 2 * K
    rng = np.random.default_rng([seed, s])
    item_emb = _item_emb(seed, n_items, emb_dim)
    index = build_index(item_emb)
    lo, hi = storage.shard_range(s, S, n_users)
    train = load_shard(run, "train", s, data)
    lists = np.empty((hi - lo, M, N_STATES, K), dtype=np.int32)
    user_emb = rng.standard_normal((hi - lo, emb_dim)).astype(np.float32)
    obs_parts: list[list[np.ndarray]] = [[] for _ in range(M)]
    for b0 in range(0, hi - lo, block):
        b1 = min(b0 + block, hi - lo)
        part = train.rows(b0, b1)
        # the hidden order: the student's own top unobserved items, so its top-50 overlaps the teachers'
        pool_items = search_excluding(index, user_emb[b0:b1], pool, part.offsets, part.items)
        lists[b0:b1], observed = _block(rng, part, pool_items, M, K)
        for x in range(M):
            obs_parts[x].append(observed[x])
    layout = RunLayout(run)
    for x, name in enumerate(names):
        for e in range(N_STATES):
            storage.write_table_atomic(
                storage.shard_path(layout.teacher_state(name, e + 1), s),
                storage.user_table(lo, hi, items=storage.dense_to_list(lists[:, x, e])),
            )
        obs = storage.csr_to_list(train.offsets, np.concatenate(obs_parts[x]))
        storage.write_table_atomic(
            storage.shard_path(layout.teacher_observed(name), s), storage.user_table(lo, hi, items=obs)
        )
    return user_emb


def write_trajectories(
    run: str,
    cfg: Config,
    seed: int = 0,
    pool: int | None = None,
    emb_path: str | None = None,
    emb_dim: int = 6,
    distributed: bool = False,
) -> dict:
    """Writes synthetic trajectories for cfg.teachers.names (K = cfg.teachers.topk) into RUN/teachers.

    Args:
        run: a run with a committed data stage.
        cfg: names, K and the config hash the teachers stage would have.
        seed: RNG seed (the output depends on it and on the data only, not on the shard order).
        pool: unobserved candidates per user (default 2K).
        emb_path: when given, also writes a student embedding .npz (`user` (n_users, d), `item`).
        emb_dim: d of those embeddings.
        distributed: generate the shards as Ray tasks (big benches) instead of in-process.

    Returns:
        {name: teacher manifest}.
    """
    from hetcomp_dist.teachers.runner import teacher_hash

    data = load_manifest(run)
    layout = RunLayout(run)
    n_users, S = data["n_users"], data["shard_size"]
    names = list(cfg.teachers.names)
    for name in names:
        storage.begin_stage(layout.teacher(name))
        for folder in [
            *(layout.teacher_state(name, e) for e in range(1, N_STATES + 1)),
            layout.teacher_observed(name),
        ]:
            storage.ensure_folder(folder)
    n_shards = storage.n_shards(n_users, S)
    prog = Progress("synthetic trajectories", n_users)
    if distributed:
        import ray

        task = ray.remote(num_cpus=1)(write_trajectory_shard)
        parts = ray.get([task.remote(run, cfg, data, s, seed, pool, emb_dim) for s in range(n_shards)])
        prog.update(n_users)
    else:
        parts = []
        for s in range(n_shards):
            parts.append(write_trajectory_shard(run, cfg, data, s, seed, pool, emb_dim))
            prog.update(len(parts[-1]))
    prog.close()
    out = {}
    for name in names:
        manifest = {
            "config_hash": teacher_hash(cfg, name, data["config_hash"]),
            "teacher": name,
            "model": "synthetic",
            "K": cfg.teachers.topk,
            "state_epochs": [10, 20, 30, 40],
            "convergence_epoch": 40,
            "n_users": n_users,
            "n_items": data["n_items"],
            "shard_size": S,
            "n_shards": n_shards,
            "seed": seed,
        }
        storage.write_manifest(layout.teacher(name), manifest)
        out[name] = storage.read_manifest(layout.teacher(name))
    if emb_path:
        storage.write_npz_atomic(
            emb_path, user=np.concatenate(parts), item=_item_emb(seed, data["n_items"], emb_dim)
        )
    return out


def perturb_embeddings(src: str, dst: str, scale: float = 0.3, seed: int = 0) -> None:
    """A student 'one period later': user vectors of `src` plus Gaussian noise (items unchanged)."""
    emb = storage.read_npz(src)
    rng = np.random.default_rng(seed)
    user = emb["user"] + scale * rng.standard_normal(emb["user"].shape).astype(np.float32) * emb["user"].std()
    storage.write_npz_atomic(dst, user=user.astype(np.float32), item=emb["item"])
