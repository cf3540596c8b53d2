"""A teacher's trajectory: pick states E1..E4 from its snapshots and export its rankings per shard.

Layout (`RunLayout`): ``RUN/teachers/<name>/state=<e>/shard-*.parquet`` (``user``, ``items``: the top-K
items not in the user's train list, best first), ``.../observed/shard-*.parquet`` (the user's train
items in the E4 model's order); the caller writes ``metrics.json`` and ``_manifest.json`` last.

Ranking never holds a users x items matrix: a `Ranker` answers per block of users, through FAISS
for models with embeddings and through a (B, n_items) score block reduced at once otherwise; with an
approximate index (``teachers.export_index``), through FAISS candidates that the model's exact scores
rank, for a model that offers candidate vectors, and each state's recall against exact is measured.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import APPROXIMATE_INDEXES, EvalConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.evaluation import retrieval
from hetcomp_dist.evaluation.metrics import list_overlap, row_overlaps
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.progress import Progress, log, peak_rss_gib

N_STATES = 4
_DEFAULT_EVAL = EvalConfig()  # the default `eval_cfg` (frozen, so one shared instance is safe)


# ------------------------------------------------------------------------------------------ states
def choose_states(snapshot_epochs: list[int], best_epoch: int) -> list[int]:
    """Epochs of E1..E4: the snapshots nearest 25/50/75/100 % of the best-validation epoch C.

    Only snapshots at epochs 1..C qualify (E4 = C itself, which always has a snapshot); a tie goes
    to the later snapshot. The result is non-decreasing.

    Args:
        snapshot_epochs: epochs that have a saved snapshot.
        best_epoch: C.

    Returns:
        [e1, e2, e3, e4].
    """
    cands = np.array(sorted(e for e in snapshot_epochs if 0 < e <= best_epoch))
    if len(cands) == 0 or cands[-1] != best_epoch:
        raise ValueError(f"no snapshot at the best epoch {best_epoch} (snapshots: {sorted(snapshot_epochs)})")
    out = []
    for frac in (0.25, 0.5, 0.75, 1.0):
        dist = np.abs(cands - frac * best_epoch)
        out.append(int(cands[np.flatnonzero(dist == dist.min())[-1]]))
    return out


def prunable_snapshots(snapshot_epochs: list[int], best_epoch: int) -> list[int]:
    """Snapshots no future choice can pick: those before the one nearest 25 % of the current best.

    A later best C' >= C only moves the targets later, so the nearest-to-0.25*C snapshot bounds
    every future E1 from below.
    """
    if best_epoch not in snapshot_epochs:
        return []
    first = choose_states(snapshot_epochs, best_epoch)[0]
    return [e for e in snapshot_epochs if e < first]


def current_rss_gib() -> float:
    """Resident set size of this process now (GiB); the peak when /proc is unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        return peak_rss_gib()


# ----------------------------------------------------------------------------------------- ranking
class Ranker:
    """Top-k retrieval for one model state: FAISS when the model has embeddings, scores otherwise.

    With an approximate index (``eval_cfg.index`` ivf or hnsw) and `candidates` > 0, a model without
    embeddings but with `candidate_embeddings` is ranked candidate-then-rescore: each user's top
    `candidates` items from the index over those vectors, ordered by the model's exact `pair_scores`.
    The approximation is the index's (and, where those vectors are not the scores, the vectors') misses;
    `recall_vs_exact` measures it. A model whose candidate vectors are its scores (`exact_candidates`:
    Mult-VAE's) is ranked by the index over them directly, as an embedding model is.

    Args:
        model: a Recommender in the state to rank with (put in eval mode here).
        train: the full train lists (autoencoders score users from their rows).
        eval_cfg: index settings.
        score_batch: users per (B, n_items) score block on the scorer path.
        candidates: candidates per user on the candidate path (0: never take it).
    """

    def __init__(
        self,
        model: Recommender,
        train: CSR,
        eval_cfg: EvalConfig = _DEFAULT_EVAL,
        score_batch: int = 1024,
        candidates: int = 0,
    ) -> None:
        self.model, self.train, self.cfg, self.score_batch = model.eval(), train, eval_cfg, score_batch
        self.candidates = 0
        with torch.no_grad():
            emb = model.embeddings()
            if emb is None and candidates > 0 and eval_cfg.index in APPROXIMATE_INDEXES:
                emb = model.candidate_embeddings(train)
                # vectors whose scores are the model's own need no rescoring: the index ranks by them
                self.candidates = candidates if emb is not None and not model.exact_candidates else 0
        self.user_emb = self.index = None
        if emb is not None:
            self.user_emb, item_emb, self.metric = emb
            self.item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
            self.index = retrieval.index_for(self.item_emb, self.metric, eval_cfg)

    def exhaustive(self) -> Ranker:
        """This candidate-path ranker with its index replaced by an exact one over the same candidate
        vectors: every item's candidate score is computed (through BLAS, like a flat search), the best
        `candidates` still rescored by the model. Its lists are still approximate (the candidate vectors
        are not the scores), so `approximate` stays True and the export measures its recall."""
        if not self.candidates:
            raise ValueError("exhaustive() is the candidate path's: this ranker has no candidates")
        out = copy.copy(self)
        out.index = retrieval.build_index(self.item_emb, self.metric, "flat")
        return out

    @property
    def approximate(self) -> bool:
        """True when the lists come from an approximate index (directly or as candidates)."""
        return self.index is not None and self.cfg.index in APPROXIMATE_INDEXES

    def score_fn(self, users: np.ndarray) -> torch.Tensor:
        """(B, n_items) scores of a block of users (the scorer path)."""
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model.scores(torch.as_tensor(users, dtype=torch.int64, device=dev), self.train).cpu()

    def _ids(self, ids: np.ndarray) -> torch.Tensor:
        """int64 ids on the model's device, copied: they may be read-only views of Arrow buffers."""
        return torch.from_numpy(np.array(ids, dtype=np.int64)).to(next(self.model.parameters()).device)

    def pair_scores(self, users: np.ndarray, items: np.ndarray) -> torch.Tensor:
        """(P,) the model's exact scores of (users[p], items[p])."""
        with torch.no_grad():
            return self.model.pair_scores(self._ids(users), self._ids(items), self.train).cpu()

    def candidate_scores(self, users: np.ndarray, cand: np.ndarray) -> torch.Tensor:
        """(B, C) the model's exact scores of each user's candidates (`Recommender.candidate_scores`)."""
        with torch.no_grad():
            return self.model.candidate_scores(self._ids(users), self._ids(cand), self.train).cpu()

    def topk(self, users: np.ndarray, k: int, ex_offsets: np.ndarray, ex_values: np.ndarray) -> np.ndarray:
        """(B, k) int32 best-first items per user, never an excluded one, -1 padded."""
        if self.candidates:
            c = max(k, self.candidates)
            cand = retrieval.search_excluding(self.index, self.user_emb[users], c, ex_offsets, ex_values)
            return retrieval.rescore(cand, np.asarray(users), k, self.candidate_scores)
        if self.index is not None:
            return retrieval.search_excluding(self.index, self.user_emb[users], k, ex_offsets, ex_values)
        return retrieval.topk_scorer(self.score_fn, users, k, ex_offsets, ex_values, self.score_batch)

    def topk_and_observed(self, users: np.ndarray, k: int, lists: CSR) -> tuple[np.ndarray, CSR]:
        """(top-k excluding `lists`, `lists` ordered by score) for a block of users -- one score block
        on the scorer path."""
        if self.index is not None:
            return self.topk(users, k, lists.offsets, lists.items), self.order_observed(users, lists)
        with torch.no_grad():
            scores = self.score_fn(users)
        top = retrieval.topk_from_scores(scores, k, lists.offsets, lists.items)
        rows = np.repeat(np.arange(lists.n), lists.lengths())
        return top, _sort_rows(lists, scores.numpy()[rows, lists.items])

    def order_observed(self, users: np.ndarray, lists: CSR) -> CSR:
        """Each row of `lists` (users' items) sorted by this model's score, best first; ties by item id."""
        rows = np.repeat(np.arange(lists.n), lists.lengths())
        if self.candidates:
            s = self.pair_scores(users[rows], lists.items).float().numpy() if len(rows) else np.zeros(0)
        elif self.index is not None:
            u, i = self.user_emb[users[rows]], self.item_emb[lists.items]
            s = (u * i).sum(1) if self.metric == "ip" else -((u - i) ** 2).sum(1)
        else:
            s = self.score_fn(users).numpy()[rows, lists.items]
        return _sort_rows(lists, s)


def recall_vs_exact(ranker: Ranker, exact: Ranker, train: CSR, users: np.ndarray, k: int) -> float:
    """Mean over `users` of |ranker's top-k ∩ exact top-k| / |exact top-k|, train items excluded: what an
    approximate index keeps of the exact lists.

    Args:
        ranker: the (approximate) ranker.
        exact: the same model state ranked exactly (a flat index or full scores).
        train: the full train lists (the exclusions).
        users: (U,) absolute user ids of the sample.
    """
    ex = train.take(np.asarray(users) - train.lo)
    got, want = (r.topk(users, k, ex.offsets, ex.items) for r in (ranker, exact))
    return list_overlap(got, want)


# standard errors (of the difference between two samples) a calibrated search keeps above its target
RECALL_Z = 2.0


def recall_margin(per_user: np.ndarray) -> tuple[float, float]:
    """(mean, margin) of per-user recalls: margin = RECALL_Z * sqrt(2) * sd / sqrt(n), the sample standard
    deviation (0 for fewer than two users), so mean - margin >= target keeps another sample of as many
    users at the target with probability ~98 % (normal approximation)."""
    n = len(per_user)
    if n == 0:
        return 1.0, 0.0
    sd = float(per_user.std(ddof=1)) if n > 1 else 0.0
    return float(per_user.mean()), RECALL_Z * math.sqrt(2.0) * sd / math.sqrt(n)


def calibrate_breadth(
    ranker: Ranker,
    exact: Ranker,
    train: CSR,
    users: np.ndarray,
    k: int,
    target: float,
    exact_share: float = 0.0,
) -> dict:
    """Widens the ranker's approximate index (`retrieval.widen`: IVF lists probed, HNSW efSearch, each
    doubled) until its recall@k against exact on `users` reaches `target`, or it searches exhaustively;
    with `exact_share` > 0, it stops short of an IVF widening to that share of its lists or more and
    says ``exact``: the caller ranks exactly instead (a flat index scans the whole catalogue through BLAS,
    about as fast as an IVF scanning a quarter of it list by list; docs/PERFORMANCE.md).

    Why: how many lists keep the exact top-k depends on the trained embeddings (at 10k items, 32 of 256
    lists kept .72 to .99 of the lists of six teachers), not on the catalogue alone, so a fixed nprobe
    is either wasteful or short. Calibrate on one sample and report on another (`export_trajectory`):
    the reported recall is then not the one the search was tuned to.

    "Reaches" means with a margin for sampling error: the calibration sample's mean recall less
    `RECALL_Z` * sqrt(2) standard errors (the per-user recalls' spread over sqrt(len(users))). Another
    sample of the same size differs from this one's mean by sqrt(2) standard errors' spread, so a search
    stopped at the bare target reports below it on the other sample about half the time when the
    target falls between two widenings (at 300k users an item-AE state calibrated to .9515 on 1,000
    users reported .9449 on 1,000 others).

    Returns:
        {"calibration_recall": mean recall@k on `users` at the final search, "calibration_margin": the
        margin taken off it, "calibration_steps": how many times it widened, "exact": whether the caller
        should rank exactly (recall short of `target` and the next widening at `exact_share` or
        above)}; the search itself is the index's `retrieval.search_breadth`.
    """
    ex = train.take(np.asarray(users) - train.lo)
    want = exact.topk(users, k, ex.offsets, ex.items)
    steps, go_exact = 0, False
    while True:
        per_user = row_overlaps(ranker.topk(users, k, ex.offsets, ex.items), want)
        recall, margin = recall_margin(per_user)
        if recall - margin >= target:
            break
        share = retrieval.widened_share(ranker.index)
        if exact_share > 0 and share is not None and share >= exact_share:
            go_exact = True
            break
        if not retrieval.widen(ranker.index):
            break
        steps += 1
    return {
        "calibration_recall": recall,
        "calibration_margin": margin,
        "calibration_steps": steps,
        "exact": go_exact,
    }


def _sort_rows(lists: CSR, scores: np.ndarray) -> CSR:
    rows = np.repeat(np.arange(lists.n), lists.lengths())
    order = np.lexsort((lists.items, -scores, rows))
    return CSR(lists.offsets, lists.items[order], lists.lo)


# ------------------------------------------------------------------------------------------ export
def _blocks(lo: int, hi: int, size: int):
    for s in range(lo, hi, size):
        yield s, min(s + size, hi)


def export_state(
    ranker: Ranker,
    train: CSR,
    out_dirs: list[str],
    n_users: int,
    shard_size: int,
    k: int,
    batch_size: int,
    observed_dir: str | None = None,
    label: str = "export",
) -> dict:
    """Writes each user's top-k unobserved items (and optionally the observed order) per shard.

    Every shard is scored block by block (`batch_size` users), written atomically to each folder of
    `out_dirs` (states sharing an epoch share the lists); memory is one shard's lists on top of the
    model and its index.

    Returns:
        {"users_per_s", "rss_start_gib", "rss_max_gib"} (resident memory sampled after every block).
    """
    prog = Progress(label, n_users)
    rss_start = rss_max = current_rss_gib()
    for s, lo, hi in storage.iter_shards("", n_users, shard_size):
        tops, obs_off, obs_val = [], [np.zeros(1, np.int64)], []
        for b0, b1 in _blocks(lo, hi, batch_size):
            block = train.rows(b0 - train.lo, b1 - train.lo)
            users = np.arange(b0, b1)
            if observed_dir is None:
                tops.append(ranker.topk(users, k, block.offsets, block.items))
            else:
                top, ordered = ranker.topk_and_observed(users, k, block)
                tops.append(top)
                obs_off.append(ordered.offsets[1:] + obs_off[-1][-1])
                obs_val.append(ordered.items)
            prog.update(b1 - b0)
            rss_max = max(rss_max, current_rss_gib())
        table = storage.user_table(lo, hi, items=storage.dense_to_list(np.concatenate(tops)))
        for d in out_dirs:
            storage.write_table_atomic(storage.shard_path(d, s), table)
        if observed_dir is not None:
            off = np.concatenate(obs_off)
            val = np.concatenate(obs_val) if obs_val else np.zeros(0, np.int32)
            storage.write_table_atomic(
                storage.shard_path(observed_dir, s),
                storage.user_table(lo, hi, items=storage.csr_to_list(off, val)),
            )
        rss_max = max(rss_max, current_rss_gib())
    return {"users_per_s": prog.close(), "rss_start_gib": rss_start, "rss_max_gib": rss_max}


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """A snapshot's state dict (never unpickles arbitrary objects)."""
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)


def export_trajectory(
    model: Recommender,
    train: CSR,
    layout: RunLayout,
    name: str,
    states: list[int],
    n_users: int,
    shard_size: int,
    k: int,
    eval_cfg: EvalConfig,
    evaluate: Callable[[Ranker, str], dict],
    batch_size: int,
    *,
    candidates: int = 0,
    recall_users: int = 0,
    recall_target: float = 0.0,
    exact_share: float = 0.0,
    seed: int = 0,
) -> dict:
    """Exports E1..E4 and the E4 observed order; returns metrics.json's per-state part.

    Args:
        model: an instance of the teacher (its weights are replaced by each snapshot in turn).
        train: full train lists.
        layout: the run's layout (the snapshots are read from, the states written to, teacher `name`'s).
        name: the teacher.
        states: [e1..e4] from `choose_states`.
        eval_cfg: the retrieval settings (an approximate index: `Ranker`).
        evaluate: (Ranker, the state's exported folder) -> {"valid": {...}, "test": {...}} of that state.
        candidates: `Ranker`'s candidates per user (0: no candidate path).
        recall_users: with an approximate index, each state's export stats get ``recall_vs_exact``
            (`recall_vs_exact` at k) on this many users drawn with `seed`; 0 = not measured.
        recall_target: > 0: before each state's export, its index is widened (`calibrate_breadth`) until
            recall@k reaches this on another `recall_users` users; needs recall_users > 0.
        exact_share: > 0, with `recall_target`: a state whose IVF would have to probe this share of its
            lists or more is exported by the exact ranker instead; on the candidate path, by a flat search
            of its candidate vectors (`Ranker.exhaustive`), rescored as before, its recall measured (the
            exact ranking would score every item through the model).
    """
    out = {"states": []}
    dev = next(model.parameters()).device
    for epoch in sorted(set(states)):
        idx = [i + 1 for i, e in enumerate(states) if e == epoch]
        model.load_state_dict(
            {k_: v.to(dev) for k_, v in load_weights(layout.teacher_snapshot(name, epoch)).items()}
        )
        t0 = time.perf_counter()
        ranker = Ranker(model, train, eval_cfg, batch_size, candidates)
        measure = ranker.approximate and recall_users > 0
        if measure:
            exact = Ranker(model, train, dataclasses.replace(eval_cfg, index="flat"), batch_size)
            # two disjoint samples: one to size the search (recall_target), one to report its recall
            drawn = np.random.default_rng(seed).choice(n_users, min(n_users, 2 * recall_users), replace=False)
            sample = np.sort(drawn[:recall_users])
            calib = np.sort(drawn[recall_users:]) if len(drawn) > recall_users else sample
            if recall_target > 0:
                sized = calibrate_breadth(ranker, exact, train, calib, k, recall_target, exact_share)
                breadth = retrieval.search_breadth(ranker.index)
                if sized["exact"] and ranker.candidates:
                    # the candidate vectors searched exhaustively, their candidates still rescored: the
                    # model's own exact ranking scores every item through its towers (NeuMF: ~700
                    # multiply-adds a pair), far more than a flat search of the vectors
                    ranker = ranker.exhaustive()
                    sized["calibration_recall"] = recall_vs_exact(ranker, exact, train, calib, k)
                    log(
                        name,
                        f"state E{idx}: recall@{k} short of {recall_target} at {breadth}, and the next "
                        f"widening probes >= {exact_share} of the lists: its {ranker.candidates} candidates "
                        f"from a flat search (recall@{k} {sized['calibration_recall']:.4f} on the "
                        "calibration users)",
                    )
                elif sized["exact"]:
                    ranker = exact
                    log(
                        name,
                        f"state E{idx}: recall@{k} {sized['calibration_recall']:.4f} < {recall_target} at "
                        f"{breadth}, and the next widening probes >= {exact_share} of the lists: exported "
                        "exactly (flat index)",
                    )
                else:
                    log(
                        name,
                        f"state E{idx}: search {breadth} for recall@{k} >= {recall_target} "
                        f"({sized['calibration_recall']:.4f} - margin {sized['calibration_margin']:.4f} "
                        f"on {len(calib)} calibration users)",
                    )
        observed = layout.teacher_observed(name) if N_STATES in idx else None
        stats = export_state(
            ranker,
            train,
            [layout.teacher_state(name, i) for i in idx],
            n_users,
            shard_size,
            k,
            batch_size,
            observed,
            label=f"{name} export E{idx} (epoch {epoch})",
        )
        if measure:
            # a state exported by the exact ranker itself has recall 1 by construction: not re-measured
            switched = ranker is exact
            stats["recall_vs_exact"] = 1.0 if switched else recall_vs_exact(ranker, exact, train, sample, k)
            stats["recall_users"] = len(sample)
            if switched:
                stats["search_breadth"] = {"exact": True}
            else:  # None: the candidate path's flat search
                stats["search_breadth"] = retrieval.search_breadth(ranker.index) or {"flat_candidates": True}
            if recall_target > 0:
                stats.update(sized)
            log(name, f"state E{idx}: recall@{k} against exact {stats['recall_vs_exact']:.4f}")
        metrics = evaluate(ranker, layout.teacher_state(name, idx[0]))
        log(
            f"{name}",
            f"state E{idx} epoch {epoch}: valid R@50={metrics['valid']['R@50']:.4f} "
            f"test R@50={metrics['test']['R@50']:.4f} ({time.perf_counter() - t0:.1f}s)",
        )
        for i in idx:
            out["states"].append({"state": i, "epoch": epoch, "export": stats, **metrics})
    out["states"].sort(key=lambda r: r["state"])
    return out
