"""Small planted runs for the student's tests and benchmarks, written in the on-storage layout.

`write_toy_run` writes ``RUN/data`` (train/valid/test shards + manifest) from a planted low-rank
model, and ``RUN/knowledge`` (P+ and rounds 0..R) whose targets are the planted model's top-K
unobserved items, noisier in early rounds -- the shape of real knowledge, without the teachers.
`write_random_knowledge` writes round 0 of any run quickly (random unobserved targets, shard by
shard) for benchmarks where only shapes matter. `replay_round` stands in for the knowledge stage's
`dkc_round` when a test pre-writes the rounds: like `dkc_round` on a committed round, it returns
the committed manifest (and checks the embeddings file the trainer handed over).
"""

from __future__ import annotations

import json

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.data.dataset import CSR, load_manifest, load_shard
from hetcomp_dist.errors import InputError
from hetcomp_dist.evaluation.retrieval import excluded_mask, first_k_kept
from hetcomp_dist.layout import RunLayout


def _csr(lists: list[np.ndarray]) -> CSR:
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    return CSR(offsets, np.concatenate(lists).astype(np.int32) if lists else np.zeros(0, np.int32), 0)


def _write_folder(folder: str, column: str, lists: CSR, n_users: int, shard_size: int) -> None:
    storage.ensure_folder(folder)
    for s, lo, hi in storage.iter_shards(folder, n_users, shard_size):
        part = lists.rows(lo, hi)
        storage.write_table_atomic(
            storage.shard_path(folder, s),
            storage.user_table(lo, hi, **{column: storage.csr_to_list(part.offsets, part.items)}),
        )


def write_toy_run(
    run: str,
    n_users: int = 300,
    n_items: int = 400,
    seed: int = 0,
    shard_size: int = 128,
    mean_items: int = 15,
    rank: int = 4,
    rounds: int = 3,
    topk: int = 100,
    pos_k: int = 10,
    teachers: tuple[str, ...] = ("mf", "ml"),
) -> dict:
    """Writes a planted run (data + knowledge rounds 0..rounds-1, the last one with the switch on).

    Users draw ~`mean_items` items from softmax(3 · u·v) of rank-`rank` factors; the split is
    60/20/20 per user (the protocol's rounding). Targets of round r are the planted top-`topk`
    unobserved items scored with noise that shrinks with r.

    Returns:
        the data manifest.
    """
    rng = np.random.default_rng(seed)
    U, V = rng.normal(size=(n_users, rank)), rng.normal(size=(n_items, rank))
    logits = 3.0 * (U @ V.T) / np.sqrt(rank)
    train, valid, test = [], [], []
    for u in range(n_users):
        n = max(5, int(rng.poisson(mean_items)))
        p = np.exp(logits[u] - logits[u].max())
        items = rng.choice(n_items, size=min(n, n_items), replace=False, p=p / p.sum())
        n_t = len(items) // 5
        test.append(np.sort(items[:n_t]))
        valid.append(np.sort(items[n_t : 2 * n_t]))
        train.append(np.sort(items[2 * n_t :]))
    tr, va, te = _csr(train), _csr(valid), _csr(test)
    layout = RunLayout(run)
    storage.ensure_folder(layout.data)
    storage.ensure_folder(layout.knowledge)
    for name, lists in (("train", tr), ("valid", va), ("test", te)):
        _write_folder(layout.split(name), "items", lists, n_users, shard_size)
    manifest = {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": int(len(tr.items) + len(va.items) + len(te.items)),
        "n_train": int(len(tr.items)),
        "n_valid": int(len(va.items)),
        "n_test": int(len(te.items)),
        "n_eval_users": int((va.lengths() > 0).sum()),
        "shard_size": shard_size,
        "seed": seed,
        "config_hash": f"toy-{n_users}-{n_items}-{seed}",
        "source": "toyrun",
    }
    storage.write_manifest(layout.data, manifest)
    pos = [t[np.argsort(-logits[u, t], kind="stable")][:pos_k] for u, t in enumerate(train)]
    _write_folder(layout.pos, "items", _csr(pos), n_users, shard_size)
    storage.write_manifest(
        layout.pos,
        {
            "pos_k": pos_k,
            "teachers": list(teachers),
            "config_hash": "toy",
            "n_users": n_users,
            "shard_size": shard_size,
        },
    )
    for r in range(rounds):
        noisy = logits + rng.normal(scale=2.0 / (r + 1), size=logits.shape)
        targets = []
        for u in range(n_users):
            s = noisy[u].copy()
            s[train[u]] = -np.inf
            targets.append(np.argsort(-s, kind="stable")[: min(topk, n_items - len(train[u]))])
        _write_folder(layout.round(r), "targets", _csr(targets), n_users, shard_size)
        final = r == rounds - 1
        storage.write_manifest(
            layout.round(r),
            {
                "round": r,
                "epoch": 10 * r,
                "teachers": list(teachers),
                "switch": final,
                "means": {t: (3.0 if final else min(3.0, float(r))) for t in teachers},
                "config_hash": "toy",
                "n_users": n_users,
                "shard_size": shard_size,
                "K": topk,
                "pos_k": pos_k,
            },
        )
    return manifest


def write_random_knowledge(
    run: str, topk: int = 100, pos_k: int = 10, seed: int = 0, teachers: tuple[str, ...] = ("mf", "ml")
) -> None:
    """Round 0 + P+ for an existing data stage: per user `topk` distinct random unobserved items
    (an arithmetic progression a + j·c mod n_items with c coprime to n_items, train items dropped)
    and the first `pos_k` train items. Vectorised per shard; for timing benchmarks only."""
    m = load_manifest(run)
    n_items, S = m["n_items"], m["shard_size"]
    layout = RunLayout(run)
    for folder in (layout.knowledge, layout.round(0), layout.pos):
        storage.ensure_folder(folder)
    width = min(n_items, 2 * topk + 64)
    for s, lo, hi in storage.iter_shards(layout.knowledge, m["n_users"], S):
        rng = np.random.default_rng([seed, s])
        train = load_shard(run, "train", s, m)
        steps = rng.integers(1, n_items, size=hi - lo)
        while True:  # coprime steps: the progression never repeats an item
            bad = np.gcd(steps, n_items) != 1
            if not bad.any():
                break
            steps[bad] = rng.integers(1, n_items, size=int(bad.sum()))
        start = rng.integers(0, n_items, size=hi - lo)
        cand = ((start[:, None] + np.arange(width)[None, :] * steps[:, None]) % n_items).astype(np.int32)
        targets = first_k_kept(cand, excluded_mask(cand, train.offsets, train.items, n_items), topk)
        pos = storage.csr_to_dense(train.offsets, train.items, pos_k)
        storage.write_table_atomic(
            storage.shard_path(layout.round(0), s),
            storage.user_table(lo, hi, targets=storage.dense_to_list(targets)),
        )
        storage.write_table_atomic(
            storage.shard_path(layout.pos, s),
            storage.user_table(lo, hi, items=storage.dense_to_list(pos)),
        )
    common = {
        "config_hash": f"random-{seed}",
        "n_users": m["n_users"],
        "shard_size": S,
        "pos_k": pos_k,
        "teachers": list(teachers),
    }
    storage.write_manifest(layout.pos, common)
    storage.write_manifest(
        layout.round(0),
        {**common, "round": 0, "epoch": 0, "switch": False, "means": {t: 0.0 for t in teachers}, "K": topk},
    )


def replay_round(
    run: str,
    cfg: Config,
    round_idx: int,
    epoch: int,
    emb_path: str,
    metric: str = "ip",
    rounds: str | None = None,
) -> dict:
    """`dkc_round`'s signature over pre-written rounds: checks the embeddings, commits the pre-written
    round ``RUN/knowledge/round=<r>`` into the student's `rounds` folder (as `dkc_round` would write
    it there), returns its manifest, and appends the call to `replay_log` (local runs) for tests."""
    layout = RunLayout(run)
    emb = storage.read_npz(emb_path)
    m = storage.read_json(storage.manifest_path(layout.data))
    if emb["user"].shape[0] != m["n_users"] or emb["item"].shape[0] != m["n_items"]:
        raise InputError(emb_path, f"shapes {emb['user'].shape} / {emb['item'].shape} do not match the run")
    src = layout.round(round_idx)
    manifest = storage.read_manifest(src)
    if manifest is None:
        raise InputError(f"round={round_idx}", "not pre-written for the replay")
    if rounds is not None:
        dst = layout.round(round_idx, rounds)
        if storage.read_manifest(dst) != manifest:
            storage.begin_stage(dst)
            for path in storage.list_files(src, ".parquet"):
                storage.write_bytes_atomic(
                    storage.join(dst, storage.relative(path, src)), storage.read_bytes(path)
                )
            storage.write_manifest(dst, manifest)
    if not storage.is_uri(run):
        with open(storage.resolve(replay_log(run))[1], "a") as f:
            f.write(
                json.dumps(
                    {
                        "round": round_idx,
                        "epoch": epoch,
                        "metric": metric,
                        "finite": bool(np.isfinite(emb["user"]).all()),
                    }
                )
                + "\n"
            )
    return manifest


def replay_log(run: str) -> str:
    """RUN/knowledge/replay_calls.jsonl: one line per `replay_round` call (a test's record, which real
    runs never write, so it is not a `RunLayout` path)."""
    return storage.join(RunLayout(run).knowledge, "replay_calls.jsonl")
