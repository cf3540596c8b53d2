"""Recall@100 against exact of the inner-product IVF: FAISS's own (IndexIVFFlat, METRIC_INNER_PRODUCT)
beside ours (`retrieval.build_index(kind="ivf", metric="ip")`, an L2 IVF over MIPS-augmented items), on
the same synthetic items, and the error of the inner products ours returns.

    python jobs/bench_ivf_recall.py

Items: 50 direction clusters, norms log-normal (sigma 1 or 0.75) or popularity-like (log of a Zipf
count), the skew that trained embeddings' item norms show; 300 queries from the same clusters, no
exclusions, k = 100, one FAISS thread. Ends with one JSON line {case: {"old", "new", "score_err"}}.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from hetcomp_dist.evaluation.metrics import list_overlap  # noqa: E402
from hetcomp_dist.evaluation.retrieval import build_index  # noqa: E402

K = 100
CASES = ((20000, 64, 1.0), (20000, 64, 0.75), (20000, 64, "pop"), (20000, 32, 1.0), (10000, 64, 1.0))
PROBES = ((512, 16), (512, 32), (256, 32))  # (lists asked for, lists probed); lists <= items / 39


def items_and_queries(n: int, d: int, norms, n_queries: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    dirs = centres[rng.integers(0, 50, n)] + 0.7 * rng.normal(size=(n, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    length = np.log1p(rng.zipf(1.5, n).clip(max=1000)) if norms == "pop" else rng.lognormal(0, norms, n)
    q = centres[rng.integers(0, 50, n_queries)] + 0.7 * rng.normal(size=(n_queries, d))
    return (dirs * length[:, None]).astype(np.float32), q.astype(np.float32)


def faiss_ip_ivf(items: np.ndarray, nlist: int, nprobe: int) -> faiss.Index:
    """FAISS's own inner-product IVF (what `build_index(kind="ivf", metric="ip")` was), for comparison."""
    d = items.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    index.nprobe = min(nprobe, nlist)
    return index


def main() -> int:
    faiss.omp_set_num_threads(1)
    out = {}
    for n, d, norms in CASES:
        x, q = items_and_queries(n, d, norms)
        exact = q.astype(np.float64) @ x.T.astype(np.float64)
        want = np.argsort(-exact, axis=1, kind="stable")[:, :K]
        for nlist, nprobe in PROBES:
            lists = min(nlist, n // 39)
            old = faiss_ip_ivf(x, lists, nprobe)
            scores, ids = build_index(x, "ip", "ivf", ivf_nlist=nlist, ivf_nprobe=nprobe).search(q, K)
            true = np.take_along_axis(exact, np.maximum(ids, 0), 1)
            case = f"n={n} d={d} norms={norms} probed={min(nprobe, lists)}/{lists}"
            out[case] = {
                "old": round(list_overlap(old.search(q, K)[1], want), 4),
                "new": round(list_overlap(ids, want), 4),
                "score_err": float(np.abs(scores - true)[ids >= 0].max() / np.abs(exact).max()),
            }
            print(case, out[case], flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
