"""Evaluation of a rank's own users during training, as mergeable metric sums.

Each rank ranks the users it owns (FAISS over the student's item embeddings, the protocol's
exclusions: valid excludes train ∪ test, test excludes train ∪ valid) and returns `MetricSums`
states; the trainer all-reduces them, so every rank sees the same means and takes the same
early-stopping decision. The exclusion sets are built once per rank; each evaluation only
rebuilds the (items-sized) index.
"""

from __future__ import annotations

import numpy as np
import torch

from hetcomp_dist.config import EvalConfig
from hetcomp_dist.data.dataset import CSR, union
from hetcomp_dist.evaluation.metrics import MetricSums, recall_ndcg
from hetcomp_dist.evaluation.retrieval import build_index, search_excluding
from hetcomp_dist.student import distributed
from hetcomp_dist.student.batching import RankData

SPLITS = ("valid", "test")


class RangeEvaluator:
    """Metric sums of users [lo, hi) with a non-empty valid list (the evaluated users).

    Args:
        data: the rank's lists.
        cfg: eval section (ks, index kind, retrieval batch size).
    """

    def __init__(self, data: RankData, cfg: EvalConfig) -> None:
        self.cfg, self.lo = cfg, data.lo
        rows = np.nonzero(data.valid.lengths() > 0)[0]
        self.rows = rows
        self.gt = {"valid": data.valid.take(rows), "test": data.test.take(rows)}
        self.ex = {"valid": union(data.train, data.test).take(rows), "test": union(data.train, data.valid).take(rows)}

    def sums(self, user_vecs: np.ndarray, item_vecs: np.ndarray, metric: str) -> dict[str, MetricSums]:
        """Per-split metric sums of this rank's evaluated users.

        Args:
            user_vecs: (hi - lo, d) query vectors of the rank's users (row r = user lo + r).
            item_vecs: (n_items, d).
            metric: "ip" or "l2".
        """
        c = self.cfg
        index = build_index(item_vecs, metric, c.index, ivf_nlist=c.ivf_nlist, ivf_nprobe=c.ivf_nprobe,
                            hnsw_m=c.hnsw_m, hnsw_ef_search=c.hnsw_ef_search)
        kmax, n_items = max(c.ks), item_vecs.shape[0]
        out = {s: MetricSums(c.ks) for s in SPLITS}
        for s0 in range(0, len(self.rows), c.batch_size):
            s1 = min(s0 + c.batch_size, len(self.rows))
            q = user_vecs[self.rows[s0:s1]]
            for split in SPLITS:
                ex, gt = self.ex[split].rows(s0, s1), self.gt[split].rows(s0, s1)
                topk = search_excluding(index, q, kmax, ex.offsets, ex.items)
                out[split].add(recall_ndcg(topk, gt.offsets, gt.items, c.ks, n_items=n_items))
        return out


def reduce_means(sums: dict[str, MetricSums], ks: tuple[int, ...], device: torch.device) -> dict[str, dict[str, float]]:
    """All-reduce per-rank metric sums; every rank gets the same means {"valid": {...}, "test": {...}}."""
    keys = [f"{m}@{k}" for k in ks for m in ("R", "N")]
    vec = torch.tensor([[sums[s].count] + [sums[s].sums[k] for k in keys] for s in SPLITS], dtype=torch.float64,
                       device=device)
    distributed.all_reduce_(vec)
    vec = vec.cpu().numpy()
    out = {}
    for i, split in enumerate(SPLITS):
        ms = MetricSums.from_state({"count": int(round(vec[i, 0])), **dict(zip(keys, vec[i, 1:]))}, ks)
        out[split] = ms.means()
    return out
