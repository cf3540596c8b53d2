"""Synthetic teacher trajectories and student embeddings in the exact on-storage layout (tests, benches).

For a run whose data stage exists (e.g. from `hetcomp_dist.data.synth.synthesize`), writes for every
teacher ``RUN/teachers/<name>/state=<e>/shard-*.parquet`` (e = 1..4: top-K items NOT in the user's
train list, best first), ``observed/shard-*.parquet`` (the train items in a teacher's order) and a
``_manifest.json`` carrying the teacher config hash the pipeline expects -- so the knowledge stage
reads them exactly like real trajectories. Optionally also a student embedding .npz.

The structure is chosen to exercise DKC: each user has a pool of unobserved items in a hidden order;
teacher x at state s ranks the pool by that order plus noise that shrinks with s (later states agree
more), and the student's user vector points at the head of the pool, so its top-50 overlaps the
teachers' lists. Generated per block of users, vectorised; memory is one shard.
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.data.dataset import load_manifest, load_shard
from hetcomp_dist.evaluation.retrieval import excluded_mask, first_k_kept
from hetcomp_dist.progress import Progress

N_STATES = 4
NOISE = (40.0, 25.0, 15.0, 8.0)  # per-state noise on pool positions (E1 noisiest)


def _coprime_steps(rng: np.random.Generator, n: int, n_items: int) -> np.ndarray:
    """n random steps c in [1, n_items) with gcd(c, n_items) = 1 (so a + j c mod n_items never repeats)."""
    out = np.zeros(0, dtype=np.int64)
    while len(out) < n:
        c = rng.integers(1, max(n_items, 2), size=2 * n)
        out = np.concatenate([out, c[np.gcd(c, n_items) == 1]])
    return out[:n]


def _block(rng: np.random.Generator, train, n_items: int, M: int, K: int, pool: int):
    """Lists (b, M, S, K), observed orders (M CSR values), pool (b, pool) for one block of users."""
    b = train.n
    a = rng.integers(0, n_items, size=b)
    c = _coprime_steps(rng, b, n_items)
    steps = np.arange(min(pool + 64, n_items))  # distinct while < n_items (c is coprime with n_items)
    cand = (a[:, None] + steps[None, :] * c[:, None]) % n_items
    cand = cand.astype(np.int32)
    pool_items = first_k_kept(cand, excluded_mask(cand, train.offsets, train.items, n_items), pool)  # (b, pool)
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
    return lists.astype(np.int32), observed, pool_items


def write_trajectories(run: str, cfg: Config, seed: int = 0, pool: int | None = None,
                       emb_path: str | None = None, emb_dim: int = 6, block: int = 1024) -> dict:
    """Writes synthetic trajectories for cfg.teachers.names (K = cfg.teachers.topk) into RUN/teachers.

    Args:
        run: a run with a committed data stage.
        cfg: names, K and the config hash the teachers stage would have.
        seed: RNG seed (the output depends on it and on the data only).
        pool: unobserved candidates per user (default 2K).
        emb_path: when given, also writes a student embedding .npz (`user` (n_users, d), `item`).
        emb_dim: d of those embeddings.
        block: users per generation block.

    Returns:
        {name: teacher manifest}.
    """
    from hetcomp_dist.teachers.runner import teacher_dir, teacher_hash

    data = load_manifest(run)
    n_users, n_items, S = data["n_users"], data["n_items"], data["shard_size"]
    names, K = list(cfg.teachers.names), cfg.teachers.topk
    M, pool = len(names), pool or 2 * K
    rng = np.random.default_rng(seed)
    item_emb = rng.standard_normal((n_items, emb_dim)).astype(np.float32)
    user_emb = np.zeros((n_users, emb_dim), dtype=np.float32) if emb_path else None
    for name in names:
        storage.begin_stage(teacher_dir(run, name))
    prog = Progress("synthetic trajectories", n_users)
    for s, lo, hi in storage.iter_shards("", n_users, S):
        train = load_shard(run, "train", s, data)
        lists = np.empty((hi - lo, M, N_STATES, K), dtype=np.int32)
        obs_parts: list[list[np.ndarray]] = [[] for _ in range(M)]
        for b0 in range(0, hi - lo, block):
            b1 = min(b0 + block, hi - lo)
            lists[b0:b1], observed, pool_items = _block(rng, train.rows(b0, b1), n_items, M, K, pool)
            for x in range(M):
                obs_parts[x].append(observed[x])
            if user_emb is not None:  # the student points at the head of the hidden order
                head = pool_items[:, :10]
                vec = np.where((head >= 0)[..., None], item_emb[np.maximum(head, 0)], 0).sum(1)
                user_emb[lo + b0: lo + b1] = vec + 0.5 * rng.standard_normal(vec.shape).astype(np.float32)
        for x, name in enumerate(names):
            tdir = teacher_dir(run, name)
            for e in range(N_STATES):
                storage.write_table_atomic(storage.shard_path(storage.join(tdir, f"state={e + 1}"), s),
                                           storage.user_table(lo, hi, items=storage.dense_to_list(lists[:, x, e])))
            storage.write_table_atomic(storage.shard_path(storage.join(tdir, "observed"), s),
                                       storage.user_table(lo, hi, items=storage.csr_to_list(train.offsets,
                                                                                            np.concatenate(obs_parts[x]))))
        prog.update(hi - lo)
    prog.close()
    out = {}
    for name in names:
        manifest = {"config_hash": teacher_hash(cfg, name, data["config_hash"]), "teacher": name,
                    "model": "synthetic", "K": K, "state_epochs": [10, 20, 30, 40], "convergence_epoch": 40,
                    "n_users": n_users, "n_items": n_items, "shard_size": S,
                    "n_shards": storage.n_shards(n_users, S), "seed": seed}
        storage.write_manifest(teacher_dir(run, name), manifest)
        out[name] = storage.read_manifest(teacher_dir(run, name))
    if emb_path:
        storage.write_npz_atomic(emb_path, user=user_emb, item=item_emb)
    return out


def perturb_embeddings(src: str, dst: str, scale: float = 0.3, seed: int = 0) -> None:
    """A student 'one period later': user vectors of `src` plus Gaussian noise (items unchanged)."""
    emb = storage.read_npz(src)
    rng = np.random.default_rng(seed)
    user = emb["user"] + scale * rng.standard_normal(emb["user"].shape).astype(np.float32) * emb["user"].std()
    storage.write_npz_atomic(dst, user=user.astype(np.float32), item=emb["item"])
