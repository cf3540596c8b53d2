"""Student-like embeddings for benchmarks: item norms grow with popularity, users sum their items.

item = random unit direction x (0.1 + log(1 + train count)); user = the sum of its train items'
vectors + N(0, 0.1^2) noise. Trained inner-product models look like this (popular items have large
norms), which is what norm-pruned exact search exploits; i.i.d. Gaussian vectors are its hard case.
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.data.dataset import load_shard


def popularity_embeddings(run: str, manifest: dict, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(users (n_users, dim), items (n_items, dim)) float32 for RUN's train lists, shard by shard."""
    n_users, n_items = manifest["n_users"], manifest["n_items"]
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal((n_items, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    count = np.zeros(n_items)
    shards = list(storage.iter_shards("", n_users, manifest["shard_size"]))
    for s, _, _ in shards:
        count += np.bincount(load_shard(run, "train", s, manifest).items, minlength=n_items)
    item = direction * (0.1 + np.log1p(count))[:, None]
    user = np.empty((n_users, dim))
    for s, lo, hi in shards:
        train = load_shard(run, "train", s, manifest)
        rows = np.repeat(np.arange(hi - lo), train.lengths())
        for j in range(dim):
            user[lo:hi, j] = np.bincount(rows, weights=item[train.items, j], minlength=hi - lo)
    user += 0.1 * rng.standard_normal(user.shape)
    return user.astype(np.float32), item.astype(np.float32)
