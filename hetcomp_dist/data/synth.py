"""Deterministic synthetic implicit feedback at any scale, written directly as a run's data shards.

Each user's items are drawn without replacement from a per-user mixture of three kinds of structure,
so that different model families have different things to learn:

- popularity: a Zipf law over items (power-law item popularity), the signal a popularity ranker gets;
- topics (low-rank): user u mixes ``topics`` item distributions with a sparse Dirichlet weight
  theta_u; items belong to few topics. P(i | u) = sum_t theta_ut phi_ti is rank ``topics`` -- what
  MF-like models capture;
- neighbourhoods (clusters): items are cut into small communities (``community_size`` items); a
  user has one home community and draws part of its items there -- a high-rank, local co-occurrence
  pattern that item-based / autoencoder / graph models capture better than a small dot product.

User activity is a truncated discrete Pareto (power law, >= ``min_interactions``). Users are
generated in fixed blocks of `GEN_BLOCK` users, block b from RNG (seed, b) only, so the data does not
depend on the shard size and never needs all users in memory; item-side parameters are O(items).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.config import Config, DataConfig, SynthConfig, to_dict
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.data.split import SplitWriter, split_manifest
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import log

STAGE = "synth"
GEN_BLOCK = 1024  # users per generator block


@dataclasses.dataclass(frozen=True)
class ItemModel:
    """Item-side parameters, O(n_items): flat CDFs for the three mixture components."""

    pop_cdf: np.ndarray  # (I,) CDF of the Zipf popularity
    topic_cdf: np.ndarray  # (T*I,) topic t's CDF shifted into [t, t+1]
    comm_perm: np.ndarray  # (I,) items ordered by community
    comm_cdf: np.ndarray  # (I,) community c's CDF (over comm_perm positions) shifted into [c, c+1]
    comm_start: np.ndarray  # (C+1,) first position of each community in comm_perm
    comm_pick_cdf: np.ndarray  # (C,) CDF of a user's home community (by community popularity)
    activity_shape: float  # Pareto shape a of user activity


def _truncated_pareto_mean(a: float, xm: float, cap: float) -> float:
    """E[min(X, cap)] for X ~ Pareto(scale xm, shape a)."""
    if abs(a - 1.0) < 1e-9:
        return xm + xm * np.log(cap / xm)
    return xm + xm**a * (cap ** (1 - a) - xm ** (1 - a)) / (1 - a)


def activity_shape(mean: float, xm: float, cap: float) -> float:
    """Pareto shape whose truncated mean (+0.5, the floor) is `mean`, by bisection."""
    target = mean + 0.5
    if target <= xm + 0.5:
        return 50.0
    if target >= _truncated_pareto_mean(0.05, xm, cap):
        return 0.05
    lo, hi = 0.05, 50.0  # the truncated mean decreases with a
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _truncated_pareto_mean(mid, xm, cap) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _cap(cfg: SynthConfig) -> int:
    return max(cfg.min_interactions, min(cfg.max_interactions, cfg.items // 4))


def item_model(cfg: SynthConfig) -> ItemModel:
    """The item side, from RNG (seed, 0) only."""
    rng = np.random.default_rng([cfg.seed, 0])
    n, T = cfg.items, cfg.topics
    pop = np.empty(n)
    pop[rng.permutation(n)] = (np.arange(n) + 1.0) ** -cfg.pop_exponent  # Zipf over a random item order
    pop /= pop.sum()
    base = pop**cfg.structure_pop_bias  # topics and communities favour popular items, less steeply
    member = rng.dirichlet(np.full(T, cfg.topic_concentration), size=n)  # (I, T), items in few topics
    zipf_t = (np.argsort(rng.random((n, T)), 0) + 1.0) ** -cfg.topic_exponent  # (I, T) a head per topic
    w = member * zipf_t * base[:, None]
    topic_cdf = (np.cumsum(w, 0) / w.sum(0)).T + np.arange(T)[:, None]
    perm = rng.permutation(n)
    C = -(-n // cfg.community_size)
    start = np.minimum(np.arange(C + 1) * cfg.community_size, n)
    cw = base[perm]
    seg = np.repeat(np.arange(C), np.diff(start))
    tot = np.bincount(seg, weights=cw, minlength=C)
    within = np.cumsum(cw) - np.repeat(np.concatenate([[0.0], np.cumsum(tot)[:-1]]), np.diff(start))
    comm_cdf = within / tot[seg] + seg
    mass = tot**2  # popular communities attract more users
    return ItemModel(
        pop_cdf=np.cumsum(pop),
        topic_cdf=topic_cdf.ravel(),
        comm_perm=perm,
        comm_cdf=comm_cdf,
        comm_start=start,
        comm_pick_cdf=np.cumsum(mass / mass.sum()),
        activity_shape=activity_shape(cfg.mean_interactions, cfg.min_interactions, _cap(cfg)),
    )


def _pick(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def generate_block(cfg: SynthConfig, items: ItemModel, block: int) -> CSR:
    """Users [block*GEN_BLOCK, ...) as distinct, sorted item lists; a pure function of (cfg, block)."""
    lo = block * GEN_BLOCK
    B = min(GEN_BLOCK, cfg.users - lo)
    rng = np.random.default_rng([cfg.seed, 1, block])
    n_items, T = cfg.items, cfg.topics
    cap = _cap(cfg)
    a = items.activity_shape
    n_u = np.minimum(np.floor(cfg.min_interactions * (1.0 - rng.random(B)) ** (-1.0 / a)), cap).astype(
        np.int64
    )
    theta_cdf = np.cumsum(rng.dirichlet(np.full(T, cfg.topic_concentration), size=B), 1)
    home = _pick(items.comm_pick_cdf, rng.random(B))
    mix = np.cumsum(rng.dirichlet(10.0 * np.asarray(cfg.mixture), size=B), 1)  # (B, 3): pop, topic, community
    got_rows, got_items = np.zeros(0, np.int64), np.zeros(0, np.int64)
    need = n_u.copy()
    for attempt in range(12):
        rows = np.nonzero(need > 0)[0]
        if not len(rows):
            break
        m = np.ceil(need[rows] * 1.5).astype(np.int64) + 4
        r = np.repeat(rows, m)
        if attempt >= 8:  # rare heavy users whose mixture keeps repeating: fill uniformly
            draw = rng.integers(0, n_items, len(r))
        else:
            comp = (rng.random(len(r))[:, None] > mix[r, :2]).sum(1)
            draw = np.empty(len(r), np.int64)
            p = comp == 0
            draw[p] = _pick(items.pop_cdf, rng.random(int(p.sum())))
            t = comp == 1
            z = (rng.random(int(t.sum()))[:, None] > theta_cdf[r[t], :-1]).sum(1)
            draw[t] = _pick(items.topic_cdf, z + rng.random(len(z))) - z * n_items
            c = comp == 2
            hc = home[r[c]]
            pos = _pick(items.comm_cdf, hc + rng.random(len(hc)))
            draw[c] = items.comm_perm[np.clip(pos, items.comm_start[hc], items.comm_start[hc + 1] - 1)]
        draw = np.clip(draw, 0, n_items - 1)
        # keep each row's first occurrences in draw order, after what the row already has
        all_r = np.concatenate([got_rows, r])
        all_i = np.concatenate([got_items, draw])
        _, first = np.unique(all_r * n_items + all_i, return_index=True)
        first = first[np.lexsort((first, all_r[first]))]  # by row, then draw position
        all_r, all_i = all_r[first], all_i[first]
        rank = np.arange(len(all_r)) - np.searchsorted(all_r, all_r)
        keep = rank < n_u[all_r]
        got_rows, got_items = all_r[keep], all_i[keep]
        need = n_u - np.bincount(got_rows, minlength=B)
    if (need > 0).any():
        raise RuntimeError(f"synth block {block}: could not draw enough distinct items")
    order = np.lexsort((got_items, got_rows))
    offsets = np.zeros(B + 1, np.int64)
    np.cumsum(n_u, out=offsets[1:])
    return CSR(offsets, got_items[order].astype(np.int32), lo)


def synth_hash(synth: SynthConfig, data: DataConfig) -> str:
    return storage.config_hash(
        "synth", dataclasses.asdict(synth), data.seed, data.shard_size, data.test_frac, data.valid_frac
    )


def check(cfg: SynthConfig) -> None:
    for name in ("users", "items", "topics", "community_size", "min_interactions"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"synth.{name}", f"must be > 0, got {getattr(cfg, name)}")
    if cfg.items < 4 * cfg.min_interactions:
        raise InputError(
            "synth.items",
            f"needs >= {4 * cfg.min_interactions} items for users of {cfg.min_interactions} interactions",
            "raise --items",
        )
    if len(cfg.mixture) != 3 or min(cfg.mixture) <= 0:
        raise InputError("synth.mixture", "needs 3 positive weights (popularity, topics, communities)")
    if cfg.users >= 2**31 or cfg.items >= 2**31:
        raise InputError("synth.users", "ids must fit in int32")


def synthesize(run: str, synth: SynthConfig, data: DataConfig, config: Config | None = None) -> dict:
    """Generates the synthetic dataset into ``RUN/data`` (split with data.seed); returns the manifest.

    Holds RUN's lease (`hetcomp_dist.lease`, its timing from ``config.pipeline``) throughout. Skips the
    work when ``RUN/data`` is already committed with the same config hash; `config` (the whole resolved
    config) is written as ``config.yaml`` beside the manifest.
    """
    check(synth)
    with RunLease(run, config.pipeline if config is not None else None):
        return _synthesize(run, synth, data, None if config is None else to_dict(config))


def _synthesize(run: str, synth: SynthConfig, data: DataConfig, config: Mapping | None) -> dict:
    layout = RunLayout(run)
    out = layout.data
    h = synth_hash(synth, data)
    done = storage.stage_is_done(out, h)
    if done is not None:
        log(STAGE, f"{out} is up to date (config {h}); skipping")
        return done
    created = storage.begin_stage(out)
    try:
        items = item_model(synth)
        writer = SplitWriter(
            layout,
            synth.users,
            synth.items,
            data.shard_size,
            data.seed,
            data.test_frac,
            data.valid_frac,
            STAGE,
        )
        for b in range(-(-synth.users // GEN_BLOCK)):
            writer.add(generate_block(synth, items, b))
        counts = writer.finish()
        source = {"kind": "synthetic", **dataclasses.asdict(synth), "activity_shape": items.activity_shape}
        storage.write_manifest(
            out,
            split_manifest(counts, synth.items, data.shard_size, data.seed, h, writer.files, source),
            config,
        )
    except BaseException:
        storage.discard_stage(out, created)  # only while the folder is still the one made above
        raise
    log(
        STAGE,
        f"committed {out}: {synth.users:,} users x {synth.items:,} items, "
        f"{counts.n_interactions:,} interactions",
    )
    return storage.read_manifest(out)
