"""Exact top-k with per-user exclusion from FAISS flat indexes over norm-sorted item blocks.

For inner product, items are sorted by L2 norm (largest first) and cut into blocks, each its own
FAISS flat index. A user's search visits blocks in order and stops once no unvisited item can enter
its list: by Cauchy-Schwarz no item of a later block scores above ``|u| * norm(first item of the
block)``, so a user stops when that bound is below the float32 score of its k-th candidate outside its
exclusion set, less the float32 rounding bound. With trained embeddings (item norms grow with
popularity) and at small dimension that is a small prefix of the catalogue. For L2 the norm gives no
score bound worth having: one block, FAISS's plain exhaustive search.

The first block is a FAISS k-NN search for the top ``M = k + cap + 1`` items, cap = |excluded| rounded
up to a power of two (rows grouped by cap), so that the k items kept after exclusion are in the list
for every protocol whose exclusion set is a subset of the row's; the one extra candidate bounds the
float32 score of what the list leaves out. Later blocks are FAISS range searches above each user's
current threshold -- the items are stored as (v, 1) and queried with (u, -r), so one radius 0 serves
every user -- which costs a comparison per score instead of a heap per block. Lists are then rescored
in float64 and ordered by (score desc, id asc), the order of a stable argsort of brute-force scores;
a row whose boundary is within float32 rounding of a left-out item (a near-tie, or an exact tie) is
redone by a float64 scan of the whole catalogue. So the result is the float64 brute-force answer, ties
included, not just FAISS's float32 one.

FAISS settings: its BLAS path (an sgemm tile, then heap updates) is faster at small d than the
per-query SIMD path that faiss 1.15 picks below 128,000 queries per call (`BLAS_THRESHOLD`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import faiss
import numpy as np

from hetcomp_dist.evaluation import kernels

PAD = -1
BLAS_THRESHOLD = 20  # FAISS's BLAS path from this many queries per call (faiss 1.15 default: 128,000)
# sgemm tile (default 4096 x 1024): 1M floats, small enough to stay in cache
BLAS_QUERY_BS, BLAS_DATABASE_BS = 1024, 1024


@contextlib.contextmanager
def faiss_blas() -> Iterator[None]:
    """FAISS's BLAS exhaustive search (`BLAS_THRESHOLD`, tile shape) inside the block, restored after."""
    cv = faiss.cvar
    old = (
        cv.distance_compute_blas_threshold,
        cv.distance_compute_blas_query_bs,
        cv.distance_compute_blas_database_bs,
    )
    cv.distance_compute_blas_threshold = BLAS_THRESHOLD
    cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = BLAS_QUERY_BS, BLAS_DATABASE_BS
    try:
        yield
    finally:
        (
            cv.distance_compute_blas_threshold,
            cv.distance_compute_blas_query_bs,
            cv.distance_compute_blas_database_bs,
        ) = old


def pow2_caps(counts: np.ndarray) -> np.ndarray:
    """(B,) int64: 0 for 0, else the smallest power of two >= count."""
    c = np.asarray(counts, np.int64)
    return np.where(c > 0, 1 << np.ceil(np.log2(np.maximum(c, 1))).astype(np.int64), 0)


class BlockedFlatIndex:
    """FAISS flat indexes over norm-sorted blocks of the items; exact top-k with exclusion.

    Args:
        item_emb: (n_items, d) item vectors.
        metric: "ip" (score u.v) or "l2" (score -|u - v|^2; always one block).
        first_block: items of the first block (searched for every user's top M: sets its threshold).
        block: items of each later block (ip), range-searched above the users' thresholds.
            ``first_block >= n_items`` gives one block: a plain exhaustive FAISS search.
    """

    def __init__(
        self, item_emb: np.ndarray, metric: str = "ip", first_block: int = 4096, block: int = 4096
    ) -> None:
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be ip or l2, got {metric!r}")
        x = np.ascontiguousarray(item_emb, dtype=np.float32)
        n, d = x.shape
        self.metric, self.d, self.ntotal = metric, d, n
        self.v64 = x.astype(np.float64)  # (n, d) by item id: exact rescoring
        norms = np.sqrt((self.v64**2).sum(1))
        order = np.argsort(-norms, kind="stable") if metric == "ip" else np.arange(n)
        self.ids = order.astype(np.int64)  # sorted position -> item id
        self.norms = norms[order]  # (n,) float64 by sorted position (descending for ip)
        self.vmax = float(norms.max(initial=0.0))
        first_block, block = max(1, int(first_block)), max(1, int(block))
        starts = [0] + (list(range(first_block, n, block)) if metric == "ip" else [])
        starts = [s for s in starts if s < n] or [0]
        self.blocks: list[tuple[int, faiss.Index]] = []
        for s, e in zip(starts, starts[1:] + [n]):
            if metric == "ip":  # (v, 1): a query (u, -r) scores u.v - r, so one radius 0 serves all users
                index = faiss.IndexFlatIP(d + 1)
                index.add(np.concatenate([x[order[s:e]], np.ones((e - s, 1), np.float32)], 1))
            else:
                index = faiss.IndexFlatL2(d)
                index.add(x[order[s:e]])
            self.blocks.append((s, index))
        # |float32 score - exact score| <= gamma |u| |v| for a FAISS (d+1)-term dot product, with a factor
        # 2 of margin; l2: gamma (|u| + |v|)^2 (FAISS's |u|^2 + |v|^2 - 2 u.v). A range-searched score
        # u.v - r + r adds the rounding of r (<= |u| vmax): `search_sets` bounds errors by 3 gamma |u| vmax.
        self.gamma = 2.0 * (d + 3) * 2.0**-24
        self.scanned = 0  # (user, item) scores FAISS computed so far: a measure of the pruning

    def search_excluding(
        self, user_vecs: np.ndarray, k: int, ex_offsets: np.ndarray, ex_values: np.ndarray
    ) -> np.ndarray:
        """Top-k per user, never an excluded item (the contract of `retrieval.search_excluding`).

        Returns:
            (B, k) int32 item ids best first (ties by smaller id), PAD where fewer than k remain.
        """
        bits = np.ones(len(ex_values), np.uint8)
        return self.search_sets(user_vecs, k, ex_offsets, ex_values, bits, [1])[0]

    def search_sets(
        self,
        user_vecs: np.ndarray,
        k: int,
        ex_offsets: np.ndarray,
        ex_items: np.ndarray,
        ex_bits: np.ndarray,
        masks: Sequence[int],
    ) -> np.ndarray:
        """Top-k per user and protocol from one search: protocol p drops items whose code & masks[p] != 0.

        Args:
            user_vecs: (B, d) queries.
            k: list length (may exceed the catalogue).
            ex_offsets, ex_items, ex_bits: CSR over the B rows of the items any protocol excludes, each
                with a uint8 bit code (e.g. train 1, valid 2, test 4).
            masks: P protocol masks (e.g. valid protocol = train | test = 5).

        Returns:
            (P, B, k) int32 item ids best first (ties by smaller id), PAD-filled.
        """
        q32 = np.ascontiguousarray(user_vecs, dtype=np.float32)
        if q32.ndim != 2 or q32.shape[1] != self.d:
            raise ValueError(f"queries must be (B, {self.d}), got {q32.shape}")
        B, n = len(q32), self.ntotal
        masks = np.asarray(masks, np.uint8)
        out = np.full((len(masks), B, max(k, 0)), PAD, np.int32)
        if B == 0 or n == 0 or k <= 0:
            return out
        q64 = q32.astype(np.float64)
        qn = np.sqrt((q64**2).sum(1))
        g = self.gamma * (3 * qn * self.vmax if self.metric == "ip" else (qn + self.vmax) ** 2)
        ex_offsets = np.asarray(ex_offsets, np.int64)
        ex_items = np.asarray(ex_items, np.int64)
        ex_bits = np.asarray(ex_bits, np.uint8)
        if len(ex_items) and not 0 <= ex_items.min() <= ex_items.max() < n:  # the kernels index by item id
            raise ValueError(f"excluded item ids must lie in [0, {n})")
        mark = np.zeros(n, np.uint8)
        caps = pow2_caps(np.diff(ex_offsets))
        with faiss_blas():
            for cap in np.unique(caps):
                rows = np.nonzero(caps == cap)[0]
                lengths = ex_offsets[rows + 1] - ex_offsets[rows]
                off = np.zeros(len(rows) + 1, np.int64)
                np.cumsum(lengths, out=off[1:])
                idx = np.repeat(ex_offsets[rows] - off[:-1], lengths) + np.arange(off[-1])
                sub = (off, ex_items[idx], ex_bits[idx])
                run_s, run_i, ub = self._scan(
                    q32[rows], qn[rows], g[rows], k, int(k + cap + 1), off, sub[1], mark
                )
                got = np.empty((len(masks), len(rows), k), np.int32)
                redo = kernels.finish(
                    q64[rows],
                    self.v64,
                    self.metric == "l2",
                    run_s,
                    run_i,
                    g[rows],
                    ub,
                    *sub,
                    masks,
                    k,
                    got,
                    mark,
                )
                if redo.any():
                    self.scanned += int(redo.sum()) * n
                    kernels.exact_rows(
                        q64[rows],
                        self.v64,
                        self.metric == "l2",
                        np.nonzero(redo)[0],
                        *sub,
                        masks,
                        k,
                        got,
                        mark,
                    )
                out[:, rows] = got
        return out

    def _scan(
        self,
        q32: np.ndarray,
        qn: np.ndarray,
        g: np.ndarray,
        k: int,
        M: int,
        ex_off: np.ndarray,
        ex_item: np.ndarray,
        mark: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Float32 top-M lists of A users over the blocks, each user stopping as early as its bound allows.

        The first block is a FAISS k-NN search (top M). Before each later block a user's threshold t
        is the float32 score of its k-th candidate outside its exclusion set: it stops when no item
        of this or later blocks can reach t - g; otherwise the block is range-searched for scores
        above r = t - 2g (no heap: only those items come back), so what it leaves out scores <= r + g.

        Returns:
            (A, M) float32 scores and (A, M) int64 ids best first (id -1 = none); (A,) float64 bound
            on the exact score of any item left out other than for its rank (-inf: none).
        """
        A = len(q32)
        run_s = np.full((A, M), -np.inf, np.float32)
        run_i = np.full((A, M), PAD, np.int64)
        ub = np.full(A, -np.inf)
        act = np.arange(A)
        for s, index in self.blocks:
            knn = act
            if s > 0:
                t = kernels.kth_kept(run_s, run_i, act, ex_off, ex_item, k, mark).astype(np.float64)
                bound = qn[act] * self.norms[s] * (1 + 1e-12)  # Cauchy-Schwarz: exact scores of the rest
                stop = bound < t - g[act]
                ub[act[stop]] = np.maximum(ub[act[stop]], bound[stop])
                act, t = act[~stop], t[~stop]
                if not len(act):
                    break
                fin = np.isfinite(t)  # rows with k kept candidates: range search; others: k-NN
                knn, rng_rows = act[~fin], act[fin]
                if len(rng_rows):
                    r = (t[fin] - 2 * g[rng_rows]).astype(np.float32)
                    qa = np.concatenate([q32[rng_rows], -r[:, None]], 1)
                    lims, D, L = index.range_search(qa, 0.0)
                    lims = lims.astype(np.int64)
                    hit_s = (D + np.repeat(r, np.diff(lims))).astype(np.float32)
                    kernels.insert_hits(run_s, run_i, rng_rows, lims, hit_s, self.ids[L + s])
                    ub[rng_rows] = np.maximum(ub[rng_rows], r.astype(np.float64) + g[rng_rows])
                    self.scanned += len(rng_rows) * index.ntotal
            if len(knn):
                q = q32[knn]
                if self.metric == "ip":  # (u, 0) . (v, 1) = u.v
                    q = np.concatenate([q, np.zeros((len(knn), 1), np.float32)], 1)
                D, L = index.search(q, min(M, index.ntotal))
                self.scanned += len(knn) * index.ntotal
                valid = L >= 0
                sc = np.where(valid, D if self.metric == "ip" else -D, -np.inf).astype(np.float32)
                kernels.merge_into(
                    run_s, run_i, knn, sc, np.where(valid, self.ids[np.maximum(L, 0) + s], PAD)
                )
        return run_s, run_i, ub
