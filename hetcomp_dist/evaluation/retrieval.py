"""Top-K retrieval with per-user exclusion: one FAISS factory, and a torch path for any scorer.

Exclusion sets are CSR arrays over the batch rows: row ``b`` excludes
``values[offsets[b]:offsets[b+1]]``. Results are ``(B, k)`` int32 item ids, best first, right-padded
with -1 when a user has fewer than ``k`` candidates. Nothing here allocates more than ``(B, n_items)``.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import torch

from hetcomp_dist.config import EvalConfig
from hetcomp_dist.evaluation import kernels
from hetcomp_dist.evaluation.faiss_exact import PAD, BlockedFlatIndex, faiss_blas, pow2_caps


def build_index(
    item_emb: np.ndarray,
    metric: str = "ip",
    kind: str = "flat",
    *,
    ivf_nlist: int = 1024,
    ivf_nprobe: int = 32,
    hnsw_m: int = 32,
    hnsw_ef_search: int = 256,
) -> faiss.Index | MipsIVFIndex | PrunedIndex | BlockedFlatIndex:
    """The one index factory: exact flat FAISS index by default, exact FAISS flat search over
    norm-sorted item blocks with norm-bound pruning (`faiss_exact.BlockedFlatIndex`), exact norm-pruned
    torch scan (`PrunedIndex`), FAISS IVF / HNSW (approximate) for large catalogues.

    IVF by inner product is an L2 IVF over the items augmented for maximum inner product search
    (`MipsIVFIndex`): FAISS's own inner-product IVF clusters the items by direction alone, and with item
    norms as unequal as trained embeddings' the probed lists miss the long items that top the lists.
    HNSW by inner product stays FAISS's own: on log-normal norms its recall@100 was .99, the augmented L2
    graph's .82.

    Args:
        item_emb: (n_items, d) item vectors.
        metric: "ip" (score = dot product) or "l2" (score = -squared distance).
        kind: "flat" | "blocked" | "pruned" | "ivf" | "hnsw".

    Returns:
        An index with ``ntotal`` and FAISS's ``search(q, k) -> (D, I)`` for (B, d) float32 queries.
    """
    x = np.ascontiguousarray(item_emb, dtype=np.float32)
    if kind == "pruned":
        return PrunedIndex(x, metric)
    if kind == "blocked":
        return BlockedFlatIndex(x, metric)
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be ip or l2, got {metric!r}")
    mips = kind == "ivf" and metric == "ip"
    if mips:  # an L2 index over the augmented items
        x, max_norm = mips_items(x)
        metric = "l2"
    n, d = x.shape
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = max(1, min(ivf_nlist, n // 39))
        quant = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, fmetric)
        index.train(x)
        index.nprobe = min(ivf_nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, fmetric)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ValueError(f"index kind must be flat, blocked, pruned, ivf or hnsw, got {kind!r}")
    index.add(x)
    return MipsIVFIndex(index, max_norm) if mips else index


MIPS_QUERY_NORM = 2.0  # `MipsIVFIndex` scales its queries to this many times the largest item norm


def mips_items(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The items augmented for maximum inner product search: ((n, d + 1) float32 rows
    ``(x, sqrt(M^2 - |x|^2))``, M = the largest item norm). Every row has norm M, so for a query
    ``(u, 0)`` the squared distance ``|u|^2 + M^2 - 2 u.x`` orders the items like their inner products."""
    x64 = x.astype(np.float64)
    sq = (x64**2).sum(1)
    m2 = float(sq.max())
    return np.concatenate([x64, np.sqrt(m2 - sq)[:, None]], 1).astype(np.float32), float(np.sqrt(m2))


class MipsIVFIndex:
    """A FAISS L2 IVF over `mips_items`, searched like an inner-product index (the reduction of maximum
    inner product search to nearest-neighbour search, Bachrach et al. 2014).

    Why: FAISS's inner-product IVF clusters the items by direction only (spherical k-means) and a user
    probes the lists nearest its direction, while with very unequal norms its top items by inner
    product include long items of other directions, in lists it does not probe. On the augmented items
    (all on the sphere of radius M, the extra coordinate small for long items and large for short ones)
    L2 k-means clusters by direction and norm together, and probing the nearest lists is a
    nearest-neighbour search, where IVF does well (the L2 metric-learning teacher's IVF export: .988).

    A query u is searched as ``(c u, 0)`` with ``c |u| = MIPS_QUERY_NORM * M``. Any c > 0 gives the
    same order of items, but not of lists: a centroid is a mean, inside the sphere, and a query much
    shorter than M probes the lists nearest the origin, not those of its direction. Measured (recall@100,
    20k items, d = 64, log-normal or popularity-like norms, 3% and 12% of the lists probed), 2M did as
    well as 4M and 16M; M was up to .03 lower at 3% (within .005 at 12%), the unscaled query up to .44 lower.

    The lists are unbalanced (many small ones of long items, a few large ones of short items), so the
    lists nearest a query may hold fewer than the k + |excluded| candidates `search_excluding` asks for:
    a row left short is filled up, after the ids it has, from searches probing twice the lists.

    `search` returns the inner products, from the distances: ``u.x = (|c u|^2 + M^2 - D) / (2c)``,
    exact to float32 rounding like FAISS's own inner-product scores.

    Args:
        index: the trained L2 `faiss.IndexIVFFlat`, the `mips_items` rows added.
        max_norm: their M.
    """

    def __init__(self, index: faiss.IndexIVFFlat, max_norm: float) -> None:
        self.index, self.max_norm = index, max_norm
        self.ntotal, self.d = index.ntotal, index.d - 1

    def search(self, user_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS-style: ((B, k) float32 inner products, descending, -FLT_MAX where the id is -1;
        (B, k) int64 item ids, -1 only where fewer than k items exist) of (B, d) queries."""
        u = np.asarray(user_vecs, np.float64)
        norm = np.sqrt((u**2).sum(1, keepdims=True))
        c = MIPS_QUERY_NORM * self.max_norm / np.where(norm > 0, norm, 1.0)  # (B, 1); zero stays zero
        q = np.zeros((len(u), self.d + 1), np.float32)
        q[:, : self.d] = u * c
        dist, ids = self._search_full(q, k)
        scores = ((c * norm) ** 2 + self.max_norm**2 - dist.astype(np.float64)) / (2 * c)
        scores[ids < 0] = -np.finfo(np.float32).max  # FAISS's inner-product filler
        return scores.astype(np.float32), ids

    def _search_full(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's search; a row with fewer than min(k, ntotal) ids is filled up from searches on twice
        the lists, until full or every list is probed.

        The fill goes after the ids the row already has, never before: a row's list is then the same
        prefix whatever k it was asked for (the export's top-K and its evaluation's top-50 agree), as
        with a plain IVF. Distances are ascending within each part, not across the two.
        """
        dist, ids = self.index.search(q, k)
        want, nprobe, nlist = min(k, self.ntotal), self.index.nprobe, self.index.nlist
        short = np.nonzero(ids[:, want - 1] < 0)[0]  # ids fill from the left
        while len(short) and nprobe < nlist:
            nprobe = min(2 * nprobe, nlist)
            wide_d, wide_i = self.index.search(q[short], k, params=faiss.SearchParametersIVF(nprobe=nprobe))
            for row, wd, wi in zip(short, wide_d, wide_i):
                have = int((ids[row] >= 0).sum())
                new = (wi >= 0) & ~np.isin(wi, ids[row, :have])
                take = min(int(new.sum()), k - have)
                ids[row, have : have + take] = wi[new][:take]
                dist[row, have : have + take] = wd[new][:take]
            short = short[ids[short, want - 1] < 0]
        return dist, ids


def search_breadth(index) -> dict | None:
    """How widely an approximate index searches: IVF ``{"nprobe", "nlist"}``, HNSW ``{"ef_search"}``;
    None for an exact index."""
    inner = index.index if isinstance(index, MipsIVFIndex) else index
    if isinstance(inner, faiss.IndexIVF):
        return {"nprobe": int(inner.nprobe), "nlist": int(inner.nlist)}
    if isinstance(inner, faiss.IndexHNSW):
        return {"ef_search": int(inner.hnsw.efSearch)}
    return None


def widened_share(index) -> float | None:
    """The share of its lists an IVF would probe after one more `widen` (None: not an IVF)."""
    inner = index.index if isinstance(index, MipsIVFIndex) else index
    if isinstance(inner, faiss.IndexIVF):
        return min(2 * inner.nprobe, inner.nlist) / inner.nlist
    return None


def widen(index) -> bool:
    """Doubles how widely an approximate index searches (IVF: the lists probed, up to every list, an
    exhaustive search; HNSW: efSearch, up to the items held). False when it cannot widen further."""
    inner = index.index if isinstance(index, MipsIVFIndex) else index
    if isinstance(inner, faiss.IndexIVF):
        if inner.nprobe >= inner.nlist:
            return False
        inner.nprobe = min(2 * inner.nprobe, inner.nlist)
        return True
    if isinstance(inner, faiss.IndexHNSW):
        if inner.hnsw.efSearch >= inner.ntotal:
            return False
        inner.hnsw.efSearch = min(2 * inner.hnsw.efSearch, inner.ntotal)
        return True
    return False


def index_for(item_emb: np.ndarray, metric: str, cfg: EvalConfig):
    """`build_index` of the kind and settings of an eval config (``eval.index`` and its parameters)."""
    return build_index(
        item_emb,
        metric,
        cfg.index,
        ivf_nlist=cfg.ivf_nlist,
        ivf_nprobe=cfg.ivf_nprobe,
        hnsw_m=cfg.hnsw_m,
        hnsw_ef_search=cfg.hnsw_ef_search,
    )


def _encode(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return rows.astype(np.int64) * (n_items + 1) + (items.astype(np.int64) + 1)


def excluded_mask(
    cand: np.ndarray, ex_offsets: np.ndarray, ex_values: np.ndarray, n_items: int
) -> np.ndarray:
    """(B, C) bool: cand[b, c] is in row b's exclusion set (PAD never is). One compiled pass per row marks
    its exclusions in an n_items scratch array and reads the candidates against it: O(B (C + E)). Why not
    numpy's isin over row-encoded keys: it sorts the B x C keys once B x n_items outgrows its lookup table
    (timings: docs/PERFORMANCE.md, the scale bench at 30k and 100k users)."""
    return kernels.hit_matrix(
        np.ascontiguousarray(cand),
        np.asarray(ex_offsets, dtype=np.int64),
        np.asarray(ex_values),
        np.zeros(n_items, np.uint8),
    )


def first_k_kept(cand: np.ndarray, drop: np.ndarray, k: int) -> np.ndarray:
    """(B, k): per row, the first k candidates not dropped (and not PAD), in order; PAD-filled."""
    keep = ~drop & (cand != PAD)
    rank = np.cumsum(keep, axis=1) - 1
    sel = keep & (rank < k)
    out = np.full((cand.shape[0], k), PAD, dtype=np.int32)
    r, c = np.nonzero(sel)
    out[r, rank[r, c]] = cand[r, c]
    return out


def grouped_search(index: faiss.Index | MipsIVFIndex, q: np.ndarray, k: int, n_excl: np.ndarray):
    """(rows, (len(rows), C) int32 candidates) per group of rows with the same power-of-two cap of
    n_excl: C = k + cap, so one heavy user does not widen the FAISS search of the whole batch."""
    n_items = index.ntotal
    caps = pow2_caps(n_excl)
    for cap in np.unique(caps):
        rows = np.nonzero(caps == cap)[0]
        with (
            faiss_blas()
        ):  # FAISS's BLAS path: faster than its per-query path at small d (faiss_exact.BLAS_THRESHOLD)
            _, cand = index.search(np.ascontiguousarray(q[rows]), int(min(k + cap, n_items)))
        yield rows, cand.astype(np.int32)


def search_excluding(
    index: faiss.Index | MipsIVFIndex | PrunedIndex | BlockedFlatIndex,
    user_vecs: np.ndarray,
    k: int,
    ex_offsets: np.ndarray,
    ex_values: np.ndarray,
) -> np.ndarray:
    """Top-k items per user from a FAISS index, never returning an excluded item.

    Asks FAISS for k + |excluded| per row, grouping rows by exclusion size (powers of two) so one heavy
    user does not widen the search of the whole batch.

    Args:
        index: from `build_index`.
        user_vecs: (B, d) float32 query vectors.
        k: list length.
        ex_offsets, ex_values: CSR exclusion sets over the B rows.

    Returns:
        (B, k) int32 item ids best first, PAD (-1) where fewer than k items remain.
    """
    if isinstance(index, (PrunedIndex, BlockedFlatIndex)):
        return index.search_excluding(user_vecs, k, ex_offsets, ex_values)
    q = np.ascontiguousarray(user_vecs, dtype=np.float32)
    B, n_items = len(q), index.ntotal
    out = np.full((B, k), PAD, dtype=np.int32)
    if B == 0:
        return out
    counts = np.diff(ex_offsets)
    for rows, cand in grouped_search(index, q, k, counts):
        n = counts[rows]
        sub_off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(n, out=sub_off[1:])
        # the group's exclusion lists, gathered without a loop over its users
        sub_val = ex_values[np.repeat(ex_offsets[rows] - sub_off[:-1], n) + np.arange(sub_off[-1])]
        out[rows] = first_k_kept(cand, excluded_mask(cand, sub_off, sub_val, n_items), k)
    return out


def rescore(
    cand: np.ndarray,
    users: np.ndarray,
    k: int,
    block_fn: Callable[[np.ndarray, np.ndarray], torch.Tensor],
    chunk: int = 1 << 18,
) -> np.ndarray:
    """Top-k of each row's candidates by exact scores (the rescoring half of candidate-then-rescore).

    Args:
        cand: (B, C) int32 candidate items per user (PAD allowed), e.g. from `search_excluding`.
        users: (B,) the users of the rows.
        k: list length (<= C).
        block_fn: ``(users (b,), cand (b, C)) -> (b, C)`` exact scores of a block of rows (PAD given as
            item 0, its score ignored), called on at most `chunk` candidates at once.

    Returns:
        (B, k) int32 best first by exact score (ties: the candidate order), PAD where fewer than k remain.
    """
    B, C = cand.shape
    keep = cand != PAD
    safe = np.where(keep, cand, 0)
    scores = np.empty((B, C), np.float32)
    step = max(1, chunk // max(C, 1))
    for s in range(0, B, step):
        with torch.no_grad():
            scores[s : s + step] = block_fn(users[s : s + step], safe[s : s + step]).float().cpu().numpy()
    scores[~keep] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(cand, order, 1).astype(np.int32)
    out[~np.take_along_axis(keep, order, 1)] = PAD
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((B, k - out.shape[1]), PAD, np.int32)], 1)
    return out


def topk_from_scores(
    scores: torch.Tensor, k: int, ex_offsets: np.ndarray, ex_values: np.ndarray
) -> np.ndarray:
    """Top-k of a (B, n_items) score block after masking excluded items (any model, any score).

    Returns:
        (B, k) int32 item ids best first, PAD where fewer than k items remain.
    """
    B, n_items = scores.shape
    s = scores.detach().float().clone()
    rows = torch.from_numpy(np.repeat(np.arange(B), np.diff(ex_offsets)))
    s[rows, torch.from_numpy(ex_values.astype(np.int64))] = float("-inf")
    kk = min(k, n_items)
    val, idx = torch.topk(s, kk, dim=1)
    idx = idx.to(torch.int32).numpy()
    idx[~torch.isfinite(val).numpy()] = PAD
    out = np.full((B, k), PAD, dtype=np.int32)
    out[:, :kk] = idx
    return out


def topk_scorer(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    users: np.ndarray,
    k: int,
    ex_offsets: np.ndarray,
    ex_values: np.ndarray,
    batch_size: int = 1024,
) -> np.ndarray:
    """`topk_from_scores` over users in batches; score_fn maps (b,) user ids to (b, n_items) scores."""
    outs = []
    for s in range(0, len(users), batch_size):
        e = min(s + batch_size, len(users))
        o0, o1 = ex_offsets[s], ex_offsets[e]
        with torch.no_grad():
            scores = score_fn(users[s:e])
        outs.append(topk_from_scores(scores, k, ex_offsets[s : e + 1] - o0, ex_values[o0:o1]))
    return np.concatenate(outs) if outs else np.zeros((0, k), np.int32)


class PrunedIndex:
    """Exact top-k by inner product or L2 with norm-bound pruning (a torch scan, no FAISS).

    Items are stored sorted by L2 norm, largest first, and scanned in blocks, for chunks of users at a
    time: one ``(A, block)`` float32 matmul per block for the A users still active, excluded pairs set
    to -inf, merged into a running top-(k+1). By Cauchy-Schwarz no item of a later block scores above
    ``|u| * norm(first item of the block)``, so a user stops as soon as that bound (inflated by the
    float32 rounding bound) is <= its running (k+1)-th score.

    Exact, and ties broken like a brute-force stable sort (score descending, then item id): the top k
    are re-scored in float64 and ordered by (score, id); a row whose float32 k-th and (k+1)-th scores
    are closer than twice the float32 rounding bound (a tie or a near-tie: the float32 choice of the
    top-k set could differ from the exact one) is redone by a float64 scan of the whole catalogue.

    L2 ranks by ``-|u - v|^2``, which for a fixed u orders items like ``(2u, -1) . (v, |v|^2)``; the
    same kernel runs on those augmented vectors. Exact, but the Cauchy-Schwarz bound is loose there
    (the augmented norms are not what makes an item near u): expect little pruning for L2.

    Args:
        item_emb: (n_items, d) item vectors.
        metric: "ip" or "l2".
        block: items per scanned block.
        first_block: items of the first block (its full top-k sets the users' thresholds; later
            blocks only look at scores above them).
        user_chunk: users scanned together (keeps a (user_chunk, block) score tile in cache).
    """

    def __init__(
        self,
        item_emb: np.ndarray,
        metric: str = "ip",
        block: int = 4096,
        user_chunk: int = 512,
        first_block: int = 1024,
    ) -> None:
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be ip or l2, got {metric!r}")
        x = np.ascontiguousarray(item_emb, dtype=np.float32)
        x64 = x.astype(np.float64)
        if metric == "l2":  # augmented (v, |v|^2); float64 keeps the exact |v|^2
            x64 = np.concatenate([x64, (x64**2).sum(1, keepdims=True)], 1)
        norms = np.sqrt((x64**2).sum(1))
        order = np.argsort(-norms, kind="stable")
        self.metric, self.d, self.ntotal = metric, x.shape[1], len(x)
        self.block, self.user_chunk = max(1, int(block)), max(1, int(user_chunk))
        self.first_block = max(1, int(first_block))
        self.v64 = np.ascontiguousarray(x64[order])  # (n, d') float64, sorted by norm, descending
        self.vecs = torch.from_numpy(self.v64.astype(np.float32))  # (n, d') float32 copy scanned
        self.norms = norms[order]  # (n,) float64
        self.ids = order.astype(np.int64)  # sorted position -> item id
        self.pos = np.empty(len(x), np.int64)  # item id -> sorted position
        self.pos[order] = np.arange(len(x))
        self.scanned = 0  # (user, item) scores computed so far (a measure of the pruning)
        self._v64_t = None  # torch view of v64 for exact rescans (torch's float64 mv beats numpy's here)
        # |float32 score - exact score| <= gamma |q| |v|: dot product rounding (d' terms) plus the
        # float32 rounding of the inputs (|v|^2 for l2), with a factor 2 of margin
        self.gamma = 2.0 * (self.v64.shape[1] + 3) * 2.0**-24

    def queries64(self, user_vecs: np.ndarray) -> np.ndarray:
        """(B, d') float64 query vectors: u (ip) or (2u, -1) (l2)."""
        q = np.asarray(user_vecs, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.d:
            raise ValueError(f"queries must be (B, {self.d}), got {q.shape}")
        q = q.astype(np.float64)
        if self.metric == "l2":
            q = np.concatenate([2 * q, -np.ones((len(q), 1))], 1)
        return q

    def pair_scores(self, user_vecs: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n,) float64 ranking score of (user_vecs[rows[j]], items[j]), on the scale of the scores
        `search_excluding` returns (ip: u.v; l2: 2u.v - |v|^2 = |u|^2 - |u - v|^2)."""
        q = self.queries64(user_vecs)
        return np.einsum(
            "nd,nd->n", q[np.asarray(rows, np.int64)], self.v64[self.pos[np.asarray(items, np.int64)]]
        )

    def search(self, user_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS-style, no exclusion: ((B, k) float32 scores (l2: squared distances), (B, k) int64 ids)."""
        B = len(user_vecs)
        ids, s = self.search_excluding(user_vecs, k, np.zeros(B + 1, np.int64), np.zeros(0, np.int64), True)
        if self.metric == "l2":
            s = (np.asarray(user_vecs, np.float64) ** 2).sum(1, keepdims=True) - s
        return s.astype(np.float32), ids.astype(np.int64)

    def search_excluding(
        self,
        user_vecs: np.ndarray,
        k: int,
        ex_offsets: np.ndarray,
        ex_values: np.ndarray,
        return_scores: bool = False,
    ):
        """Top-k items per user, never an excluded one (the contract of module-level `search_excluding`).

        Args:
            user_vecs: (B, d) queries.
            k: list length (may exceed the catalogue).
            ex_offsets, ex_values: CSR exclusion sets over the B rows.
            return_scores: also return the (B, k) float64 ranking scores (see `pair_scores`; -inf at PAD).

        Returns:
            (B, k) int32 item ids best first (ties by smaller id), PAD where fewer than k items remain;
            with `return_scores`, the tuple (ids, scores).
        """
        q64 = self.queries64(user_vecs)
        B, n = len(q64), self.ntotal
        if B == 0 or n == 0 or k <= 0:
            out = np.full((B, k), PAD, np.int32)
            return (out, np.full((B, k), -np.inf)) if return_scores else out
        m = min(k + 1, n)  # tracked per user: the (k+1)-th score is the stopping threshold
        q32 = torch.from_numpy(q64.astype(np.float32))
        qn = np.sqrt((q64**2).sum(1))
        vals = np.full((B, m), -np.inf, np.float32)
        tpos = np.full((B, m), -1, np.int64)
        C = self.user_chunk
        # exclusions as (row, sorted position) pairs ordered by (chunk of the row, position)
        ex_rows = np.repeat(np.arange(B), np.diff(ex_offsets))
        ex_pos = self.pos[np.asarray(ex_values, np.int64)]
        key = (ex_rows // C) * n + ex_pos
        o = np.argsort(key, kind="stable")
        ex_rows, ex_pos, key = ex_rows[o], ex_pos[o], key[o]

        def chunk(c0: int) -> int:
            c1 = min(c0 + C, B)
            a0, a1 = np.searchsorted(key, [(c0 // C) * n, (c0 // C + 1) * n])
            vals[c0:c1], tpos[c0:c1], scanned = self._scan(
                q32[c0:c1], qn[c0:c1] * (1 + self.gamma), m, k, ex_rows[a0:a1] - c0, ex_pos[a0:a1]
            )
            return scanned

        # many small ops, where threads (intra-op, or Python's over chunks through the GIL) cost more
        # than they give: the scan runs on one core; parallelism is over processes (the Ray path's tasks)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.scanned += sum(map(chunk, range(0, B, C)))
        finally:
            torch.set_num_threads(threads)
        return self._finish(q64, qn, vals, tpos, k, ex_offsets, ex_values, return_scores)

    def _scan(
        self, q: torch.Tensor, bound: np.ndarray, m: int, k: int, ex_rows: np.ndarray, ex_pos: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Running float32 top-m of one chunk of A users: ((A, m) scores, (A, m) sorted positions,
        number of scores computed). ex_rows / ex_pos: the chunk's excluded (row, sorted position)
        pairs, ordered by position."""
        A, n = len(q), self.ntotal
        vals = np.full((A, m), -np.inf, np.float32)
        tpos = np.full((A, m), -1, np.int64)
        act = np.arange(A)  # chunk rows still scanning
        slot = np.arange(A)  # chunk row -> index among the active rows (-1: finished)
        q_act, scanned, s = q, 0, 0
        while s < n:
            if s > 0 and m == k + 1:
                done = bound[act] * self.norms[s] <= vals[act, -1]
                if done.any():
                    act = act[~done]
                    if not len(act):
                        break
                    q_act = q[torch.from_numpy(act)]
                    slot[:] = -1
                    slot[act] = np.arange(len(act))
            e = min(s + (self.first_block if s == 0 else self.block), n)
            sc = (q_act @ self.vecs[s:e].T).numpy()  # (A_active, e - s)
            scanned += sc.size
            a, b = np.searchsorted(ex_pos, [s, e])
            if b > a:
                r = slot[ex_rows[a:b]]
                hit = r >= 0
                sc[r[hit], ex_pos[a:b][hit] - s] = -np.inf
            thr = vals[act, -1]
            rows = np.nonzero(sc.max(1) > thr)[0]  # users with a score above their running (k+1)-th
            if len(rows):
                sub = sc if len(rows) == len(sc) else sc[rows]
                if s == 0:
                    bv, bi = (x.numpy() for x in torch.topk(torch.from_numpy(sub), min(m, e - s), dim=1))
                else:  # few entries pass the threshold once the first block is in
                    rr, cc = np.divmod(np.flatnonzero(sub > thr[rows, None]), sub.shape[1])  # row-major
                    cnt = np.bincount(rr, minlength=len(rows))
                    rank = np.arange(len(rr)) - (np.cumsum(cnt) - cnt)[rr]  # place within its row
                    bv = np.full((len(rows), cnt.max()), -np.inf, np.float32)
                    bi = np.zeros(bv.shape, np.int64)
                    bv[rr, rank], bi[rr, rank] = sub[rr, cc], cc
                g = act[rows]
                top_v, top_i = torch.topk(torch.from_numpy(np.concatenate([vals[g], bv], 1)), m, dim=1)
                vals[g] = top_v.numpy()
                tpos[g] = np.take_along_axis(np.concatenate([tpos[g], bi + s], 1), top_i.numpy(), 1)
            s = e
        return vals, tpos, scanned

    def _finish(
        self,
        q64: np.ndarray,
        qn: np.ndarray,
        vals: np.ndarray,
        tpos: np.ndarray,
        k: int,
        ex_offsets: np.ndarray,
        ex_values: np.ndarray,
        return_scores: bool,
    ):
        """Float32 running top-(k+1) -> (B, k) ids ordered by (float64 score desc, id); near-tie rows
        redone."""
        B, m = vals.shape
        kk = min(k, m)
        fin = np.isfinite(vals[:, :kk])
        p = np.maximum(tpos[:, :kk], 0)
        s64 = np.where(fin, np.einsum("bd,bkd->bk", q64, self.v64[p]), -np.inf)
        ids = np.where(fin, self.ids[p], PAD)
        ok = (
            (s64[:, :-1] > s64[:, 1:])
            | ((s64[:, :-1] == s64[:, 1:]) & (ids[:, :-1] < ids[:, 1:]))
            | ~fin[:, 1:]
        )
        for r in np.nonzero(~ok.all(1))[0]:  # float64 order or ties by id differ from the float32 order
            o = np.lexsort((ids[r], -s64[r]))
            ids[r], s64[r] = ids[r, o], s64[r, o]
        if m > kk:  # the (k+1)-th is known: is the float32 top-k set the exact one?
            with np.errstate(invalid="ignore"):
                gap = vals[:, kk - 1].astype(np.float64) - vals[:, kk]  # NaN where both are -inf
            redo = np.nonzero(fin[:, kk - 1] & (gap <= 2 * self.gamma * qn * self.norms[0]))[0]
            for r in redo:
                self.scanned += self.ntotal
                ids[r], s64[r] = self._exact_row(q64[r], kk, ex_values[ex_offsets[r] : ex_offsets[r + 1]])
        out = np.full((B, k), PAD, np.int32)
        out[:, :kk] = ids
        if not return_scores:
            return out
        sc = np.full((B, k), -np.inf)
        sc[:, :kk] = s64
        return out, sc

    def _exact_row(self, q64: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One user by a float64 scan of all items: (k,) ids by (score desc, id), PAD-filled; (k,) scores."""
        if self._v64_t is None:
            self._v64_t = torch.from_numpy(self.v64)
        s = (self._v64_t @ torch.from_numpy(q64)).numpy()  # (n,) by sorted position
        s[self.pos[np.asarray(excluded, np.int64)]] = -np.inf
        kth = -np.partition(-s, k - 1)[k - 1]
        cand = np.nonzero(s >= kth)[0] if np.isfinite(kth) else np.nonzero(np.isfinite(s))[0]
        ids = self.ids[cand]
        o = np.lexsort((ids, -s[cand]))[:k]
        out, v = np.full(k, PAD, np.int32), np.full(k, -np.inf)
        out[: len(o)], v[: len(o)] = ids[o], s[cand[o]]
        return out, v
