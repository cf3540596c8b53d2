"""Vectorised helpers the teacher models share: interaction batches, negative sampling, sparse rows.

numpy/torch (and one numba loop); nothing here knows about Ray, storage or the training loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import numba as nb
import numpy as np
import torch

from hetcomp_dist.data.dataset import CSR

# "No item" inside log-sum-exps: exp() of it is 0 in float32 and float64, yet (unlike -inf) a row of
# nothing but pads keeps finite gradients; far below any clamped logit.
PAD_LOGIT = -1.0e4


class PairIndex:
    """Each user's train items, sorted within the user's row, for membership tests (`contains`): a query
    searches its user's row only -- one or two cache misses, where a binary search over every pair's
    sorted key takes ~log2(nnz) of them and slowed the teachers' negative sampling as the data grew."""

    def __init__(self, train: CSR) -> None:
        order = np.lexsort((train.items, np.repeat(np.arange(train.n), train.lengths())))
        self.offsets = np.ascontiguousarray(train.offsets, dtype=np.int64)
        self.items = np.ascontiguousarray(train.items[order], dtype=np.int64)
        self.lo = int(train.lo)

    def __len__(self) -> int:
        """The number of pairs (a model rebuilds its index when its train lists change size)."""
        return len(self.items)


@nb.njit(cache=True, nogil=True)
def _contains(offsets, items, lo, users, query):
    out = np.zeros(query.shape[0], np.bool_)
    n = offsets.shape[0] - 1
    for j in range(query.shape[0]):
        r = users[j] - lo
        if r < 0 or r >= n:
            continue
        a, b, end = offsets[r], offsets[r + 1], offsets[r + 1]
        while a < b:  # first position in the row whose item is >= the query
            mid = (a + b) >> 1
            if items[mid] < query[j]:
                a = mid + 1
            else:
                b = mid
        out[j] = a < end and items[a] == query[j]
    return out


def contains(index: PairIndex, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(n,) bool: pair (users[j], items[j]) is a train pair of `index` (False for users outside it)."""
    return _contains(index.offsets, index.items, index.lo, users.astype(np.int64), items.astype(np.int64))


def sample_negatives(
    keys: PairIndex, users: np.ndarray, n_items: int, rng: np.random.Generator, n: int = 1, rounds: int = 10
) -> np.ndarray:
    """(len(users), n) uniform items outside each user's train list (`keys`, a `PairIndex`; rejection
    sampling).

    After `rounds` redraws a remaining collision is kept: only users who saw almost the whole
    catalogue could still have one, and for them a rare positive-as-negative is harmless.
    """
    u = np.repeat(users, n)
    neg = rng.integers(0, n_items, size=len(u))
    for _ in range(rounds):
        bad = np.nonzero(contains(keys, u, neg))[0]
        if len(bad) == 0:
            break
        neg[bad] = rng.integers(0, n_items, size=len(bad))
    return neg.reshape(len(users), n)


def pair_batches(
    train: CSR, rng: np.random.Generator, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (users (B,), positives (B,)) over every train interaction, shuffled."""
    users = train.user_ids()
    items = train.items
    order = rng.permutation(len(items))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        yield users[idx], items[idx]


def transpose(train: CSR, n_items: int) -> CSR:
    """Item-major CSR: row i lists the (absolute) users who have item i in train."""
    users = train.user_ids()
    order = np.argsort(train.items, kind="stable")
    counts = np.bincount(train.items, minlength=n_items)
    offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return CSR(offsets, users[order].astype(np.int32), 0)


def sparse_rows(
    csr: CSR,
    rows: np.ndarray,
    n_cols: int,
    normalise: bool = True,
    drop: float = 0.0,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """(len(rows), n_cols) sparse COO float tensor of binary CSR rows (relative row indices).

    Args:
        csr: the lists.
        rows: relative row indices into `csr`, in output order.
        n_cols: width (items for user rows, users for item columns).
        normalise: scale each row to unit L2 norm (Mult-VAE's input normalisation).
        drop: dropout rate applied to the entries (kept ones scaled by 1 / (1 - drop)), after
            normalising as in Mult-VAE.
        rng: needed when drop > 0.
    """
    sub = csr.take(np.asarray(rows))
    lengths = sub.lengths()
    r = np.repeat(np.arange(len(rows)), lengths)
    v = np.ones(len(sub.items), dtype=np.float32)
    if normalise:
        v /= np.sqrt(np.maximum(lengths, 1)).astype(np.float32)[r]
    c = sub.items.astype(np.int64)
    if drop > 0:
        keep = rng.random(len(v)) >= drop
        r, c, v = r[keep], c[keep], v[keep] / (1.0 - drop)
    idx = torch.from_numpy(np.stack([r.astype(np.int64), c]))
    return torch.sparse_coo_tensor(
        idx, torch.from_numpy(v), (len(rows), n_cols), check_invariants=False
    ).coalesce()


def dense_rows(csr: CSR, rows: np.ndarray, n_cols: int) -> torch.Tensor:
    """(len(rows), n_cols) dense binary float block of CSR rows (a batch, never the whole matrix)."""
    sub = csr.take(np.asarray(rows))
    out = torch.zeros(len(rows), n_cols)
    r = torch.from_numpy(np.repeat(np.arange(len(rows)), sub.lengths()))
    out[r, torch.from_numpy(sub.items.astype(np.int64))] = 1.0
    return out


def rows_of(train: CSR, users: np.ndarray) -> np.ndarray:
    """Relative row indices of absolute user ids in `train` (checks they are in its range)."""
    rel = np.asarray(users, dtype=np.int64) - train.lo
    if len(rel) and (rel.min() < 0 or rel.max() >= train.n):
        raise IndexError(f"users outside the train rows [{train.lo}, {train.lo + train.n})")
    return rel


def sampled_exclusions(
    sample: torch.Tensor, ex_rows: torch.Tensor, ex_cols: torch.Tensor, n_total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The excluded pairs X that fall in a sample of distinct columns: (rows, positions in `sample`).

    Args:
        sample: (m,) int64 distinct columns.
        ex_rows, ex_cols: (nnz,) int64 the excluded pairs, distinct.
        n_total: columns in all (a column -> position table of this length: O(nnz + n_total), where a
            binary search in the sorted sample costs log m random reads per pair).
    """
    where = torch.full((n_total,), -1, dtype=torch.int64, device=sample.device)
    where[sample] = torch.arange(len(sample), device=sample.device)
    pos = where[ex_cols]
    hit = pos >= 0
    return ex_rows[hit], pos[hit]


def sampled_log_scale(
    n_rows: int, m: int, ex_rows: torch.Tensor, hit_rows: torch.Tensor, n_total: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row b: log(|R_b| / m_b), the factor from the sampled tail's sum up to the whole tail, and m_b.

    Args:
        n_rows, m: rows, and columns in the sample.
        ex_rows: (nnz,) rows of every excluded pair (|R_b| = n_total - |X_b|).
        hit_rows: rows of the excluded pairs inside the sample (m_b = m - their count).
        n_total: columns in all.
    """
    n_ex, n_hit = (torch.bincount(r, minlength=n_rows) for r in (ex_rows, hit_rows))
    return log_scale_from_counts(n_ex, m, n_hit, n_total, dtype)


def log_scale_from_counts(
    n_ex: torch.Tensor, m: int, n_hit: torch.Tensor, n_total: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampled_log_scale` from per-row counts: n_ex (n_rows,) excluded columns, n_hit (n_rows,) of them in
    the sample."""
    kept = m - n_hit.to(dtype)
    return torch.log((n_total - n_ex.to(dtype)).clamp(min=0)) - torch.log(kept), kept


def sampled_tail_lse(
    logits: torch.Tensor, sample: torch.Tensor, ex_rows: torch.Tensor, ex_cols: torch.Tensor, n_total: int
) -> torch.Tensor:
    """Estimate of each row's log Σ_{j ∉ X_b} e^{s_bj} over `n_total` columns, from its logits on a
    uniform sample S of distinct columns shared by the rows (sampled softmax's normaliser).

    For row b, the m_b sampled columns outside X_b are a uniform sample of its tail R_b, and
    Z_b = Σ_{j∈R_b} e^{s_bj} is estimated by |R_b| / m_b · Σ_{j ∈ S∩R_b} e^{s_bj}: unbiased given m_b, but
    its log is biased low (Jensen) by about (1 - m_b/|R_b|) · CV²/(2 m_b), CV² the squared coefficient of
    variation of e^s over the tail; exact when S holds every column.

    Args:
        logits: (B, m) s_bj of the sampled columns, in `sample`'s order.
        sample: (m,) int64 distinct columns.
        ex_rows, ex_cols: (nnz,) int64 the excluded pairs X, distinct.
        n_total: columns in all.

    Returns:
        (B,) the estimate; -inf where no sampled column falls in the row's tail.
    """
    B, m = logits.shape
    if m == 0:
        return torch.full((B,), float("-inf"), dtype=logits.dtype, device=logits.device)
    rows, pos = sampled_exclusions(sample, ex_rows, ex_cols, n_total)
    s = logits.index_put((rows, pos), torch.tensor(PAD_LOGIT, dtype=logits.dtype, device=logits.device))
    scale, kept = sampled_log_scale(B, m, ex_rows, rows, n_total, logits.dtype)
    lse = torch.logsumexp(s, 1)
    return torch.where(kept > 0, lse + scale, torch.full_like(lse, float("-inf")))
