"""HetComp's distillation losses (METHOD.md §3), pure torch, exact and vectorised over users.

Notation: logits ŝ = clamp(s, -c, c) (c = 40); a user's exclusion set X_u (its train items plus the
targets a term leaves out); its tail R_u = I minus X_u. With PL over an ordered list π and tail R:

    PL(π; R) = -Σ_k [ŝ_{π_k} - log(Σ_{l>=k} e^{ŝ_{π_l}} + Σ_{j∈R} e^{ŝ_j})]
    L_O = Σ_{i ∈ P+ ∪ T} -log(e^{ŝ_i} / (e^{ŝ_i} + Σ_{j ∈ N_u \\ T} e^{ŝ_j}))
    L_F = PL(P+; N_u \\ T^a) + ½ [PL(T^a; N_u \\ T^a) + PL(T^b; N_u \\ T^b)]

The only full-catalogue quantity is the tail's log-sum-exp. `tail_logsumexp` computes it exactly
from the factorised logits s = a_u . c_j in blocks of (item chunk x users), never holding more than
one block: the backward pass recomputes the blocks, which stay in cache, where the whole (N x B) exp
matrix would not. A block is clamped only when the norm bound ||a|| ||c|| says one of its logits can
reach the clamp, and the clamp's zero gradient is applied by one-sided threshold passes, never by boolean
masks over the block. Excluded entries are *zeroed* in exp-space rather than subtracted from a full sum,
so the tail stays exact when the excluded items hold almost all the mass (which they do once the student
has learnt them). On CPU in float32 (training's case) the same sums run in `tail_kernels`' fused numba
kernels instead: one pass per item over the batch's users, clamp included, about 1.4-1.8x faster per step
(`jobs/bench_student.py`); the blocked torch code serves GPUs, float64 and `kernel="torch"`.
`sampled_tail_logsumexp` is the estimator for catalogues too large to score per batch.

Lists are (B, L) int64 item ids, -1 padded at the end; per-user losses come back as (B,).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.nn import functional

from hetcomp_dist.models.sampling import PAD_LOGIT, log_scale_from_counts, sampled_tail_lse
from hetcomp_dist.objectives import tail_kernels

LOG2E = 1.0 / math.log(2.0)


# ------------------------------------------------------------------------------ exclusion sets
def exclusion(
    rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deduplicated exclusion pairs, sorted by item then row.

    Args:
        rows: (nnz,) int64 batch row of each excluded pair.
        cols: (nnz,) int64 excluded item (pairs with cols < 0 are dropped: list padding).
        n_rows, n_items: block shape.

    Returns:
        (rows, cols), each (nnz',) int64.
    """
    if rows.device.type == "cpu":  # counting sorts, O(nnz + n_rows + n_items)
        r, c = tail_kernels.sorted_pairs(rows.numpy(), cols.numpy(), n_rows, n_items)
        return torch.from_numpy(r), torch.from_numpy(c)
    keep = cols >= 0
    key = torch.unique(cols[keep] * n_rows + rows[keep])  # sorted
    return key % n_rows, key // n_rows


def list_pairs(
    rows: torch.Tensor, cols: torch.Tensor, lists: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (nnz,) pairs (rows, cols) plus every entry of the (B, L) -1 padded lists, as they come
    (duplicates and pads kept): what a `tail_estimator` function takes.

    Returns:
        (rows, cols), each (nnz + B * L,) int64.
    """
    B = lists.shape[0]
    list_rows = torch.arange(B, device=lists.device).repeat_interleave(lists.shape[1])
    return torch.cat([rows, list_rows]), torch.cat([cols, lists.reshape(-1)])


def exclude_lists(
    rows: torch.Tensor, cols: torch.Tensor, lists: torch.Tensor, n_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`exclusion` of `list_pairs`.

    Returns:
        (rows, cols), each (nnz',) int64, deduplicated and sorted by item then row.
    """
    return exclusion(*list_pairs(rows, cols, lists), lists.shape[0], n_items)


def _auto_chunk(n_rows: int, n_items: int, device: torch.device) -> int:
    if device.type == "cuda":  # one block when it fits ~1 GiB; the GPU wants big kernels
        return max(1, min(n_items, 2**28 // max(n_rows, 1)))
    return max(64, min(n_items, 2**18 // max(n_rows, 1)))  # ~1 MiB blocks: stay in L2


# Slack on the norm bound |a . c| <= ||a|| ||c||: far above the rounding of a d-term dot product and of
# the norms in float32 (even with TF32 matmuls), so a block that passes the bound never clips.
_BOUND_SLACK = 1.0 / 32


def _clipping_blocks(at: torch.Tensor, c: torch.Tensor, lim: float, chunk: int) -> list[bool]:
    """Per block of `chunk` items: can any log2-scale logit c_j . at_b in it leave [-lim, lim]?

    Decided from the bound |c_j . at_b| <= max_j ||c_j|| max_b ||at_b|| without a pass over the block:
    early in training no block can clip, and clamping them would be the identity.

    Args:
        at: (d, B) user side, pre-scaled by log2 e.
        c: (N, d) item side.
        lim: the clamp in log2 units.
        chunk: items per block.
    """
    N = c.shape[0]
    n_blocks = -(-N // chunk)
    if not at.shape[1] or not N:
        return [False] * n_blocks
    item_max = functional.pad(c.norm(dim=1), (0, n_blocks * chunk - N)).view(n_blocks, chunk).amax(1)
    return (item_max * at.norm(dim=0).max() > lim * (1.0 - _BOUND_SLACK)).tolist()


def _below(x: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` under x rounded to `dtype` (comparisons with x happen in that dtype)."""
    return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(float("-inf"), dtype=dtype)))


def _clipped_to_minus_inf(c: torch.Tensor, neg_at: torch.Tensor, below: float) -> torch.Tensor:
    """(e - s, B) logits x = c . at with every entry outside [-lim, lim] set to -inf (exp2 then gives the
    clamp's zero derivative there), from -at (d, B) and below = `_below(-lim, dtype)`.

    Two one-sided threshold passes and a negation instead of boolean masks, which cost several times as
    much on CPU; negation commutes with rounding, so -(c . neg_at) is c . at exactly.
    """
    blk = functional.threshold_(torch.mm(c, neg_at), below, float("inf")).neg_()  # x > lim -> -inf
    return functional.threshold_(blk, below, float("-inf"))  # x < -lim -> -inf


class _TailLSE(torch.autograd.Function):
    """log Σ_{j ∉ X_b} exp(clamp(a_b . c_j)) with the gradient wrt a and c; see `tail_logsumexp`."""

    @staticmethod
    def forward(ctx, a, c, ex_rows, ex_cols, clamp, chunk, fused):
        B, N = a.shape[0], c.shape[0]
        # exp(s) = 2^(s log2 e): exp2 is the cheaper instruction sequence on CPU
        at = (a * LOG2E).T.contiguous()
        lim = clamp * LOG2E
        if fused:
            # item j's excluded users are ex_rows[bounds[j]:bounds[j + 1]] (ex_cols is sorted)
            bounds = np.zeros(N + 1, np.int64)
            np.cumsum(np.bincount(ex_cols.numpy(), minlength=N), out=bounds[1:])
            z = tail_kernels.tail_forward(
                at.numpy(),
                c.detach().contiguous().numpy(),
                ex_rows.numpy(),
                bounds,
                lim,
                torch.get_num_threads(),
            )
            z = torch.from_numpy(z).to(a.dtype)
            ctx.save_for_backward(a, c, ex_rows, ex_cols, z)
            ctx.meta = (lim, chunk, None, bounds)
            return torch.log(z)
        clips = _clipping_blocks(at, c, lim, chunk)
        bounds = torch.searchsorted(
            ex_cols, torch.arange(0, N + chunk, chunk, device=a.device).clamp(max=N)
        ).tolist()
        z = torch.zeros(1, B, dtype=a.dtype, device=a.device)
        for k, s in enumerate(range(0, N, chunk)):
            blk = torch.mm(c[s : s + chunk], at)
            if clips[k]:
                blk.clamp_(-lim, lim)
            blk.exp2_()
            blk[ex_cols[bounds[k] : bounds[k + 1]] - s, ex_rows[bounds[k] : bounds[k + 1]]] = 0.0
            z += blk.sum(0, keepdim=True)
        z = z[0]
        ctx.save_for_backward(a, c, ex_rows, ex_cols, z)
        ctx.meta = (lim, chunk, clips, bounds)
        return torch.log(z)

    @staticmethod
    def backward(ctx, g):
        a, c, ex_rows, ex_cols, z = ctx.saved_tensors
        lim, chunk, clips, bounds = ctx.meta
        coef = torch.where(z > 0, g / z, torch.zeros_like(z))  # empty tail: lse = -inf, no gradient
        awt = (a * coef[:, None]).T.contiguous()
        if clips is None:  # fused
            at = (a * LOG2E).T.contiguous()
            grad_c, grad_at = tail_kernels.tail_backward(
                at.numpy(),
                awt.numpy(),
                c.detach().contiguous().numpy(),
                ex_rows.numpy(),
                bounds,
                lim,
                torch.get_num_threads(),
            )
            grad_a = torch.from_numpy(grad_at.T).to(a.dtype) * coef[:, None]
            return grad_a, torch.from_numpy(grad_c), None, None, None, None, None
        at = (a * LOG2E).T.contiguous()
        neg_at, below = -at, _below(-lim, a.dtype)
        N = c.shape[0]
        grad_c = torch.empty_like(c)
        grad_at = torch.zeros(a.shape[1], a.shape[0], dtype=a.dtype, device=a.device)
        for k, s in enumerate(range(0, N, chunk)):
            e = min(s + chunk, N)
            # (e - s, B) block of d exp(ŝ) / d s: exp of the logit, 0 where excluded or clipped
            blk = _clipped_to_minus_inf(c[s:e], neg_at, below) if clips[k] else torch.mm(c[s:e], at)
            blk.exp2_()
            blk[ex_cols[bounds[k] : bounds[k + 1]] - s, ex_rows[bounds[k] : bounds[k + 1]]] = 0.0
            # (aw^T blk^T)^T, not blk aw: MKL's product with d output columns was ~4x slower on CPU
            grad_c[s:e] = torch.mm(awt, blk.T).T
            grad_at.addmm_(c[s:e].T, blk)
        return grad_at.T * coef[:, None], grad_c, None, None, None, None, None


def tail_logsumexp(
    a: torch.Tensor,
    c: torch.Tensor,
    ex_rows: torch.Tensor,
    ex_cols: torch.Tensor,
    clamp: float = 40.0,
    chunk: int = 0,
    kernel: str = "auto",
) -> torch.Tensor:
    """Exact log Σ_{j ∉ X_b} exp(ŝ_bj) over the full catalogue, ŝ = clamp(a_b . c_j, ±clamp).

    Args:
        a: (B, d) user-side vectors.
        c: (N, d) item-side vectors.
        ex_rows, ex_cols: (nnz,) exclusion pairs from `exclusion` (deduplicated, sorted by item).
        clamp: logit clamp c.
        chunk: items per block of the torch kernel (0 = auto: ~1 MiB blocks on CPU, up to 1 GiB on GPU).
        kernel: "fused" (`tail_kernels`: one pass per item over the batch's users, float32 on CPU only),
            "torch" (blocks of `chunk` items), or "auto": fused where it applies, else torch.

    Returns:
        (B,) tail log-sum-exp; -inf for a user whose tail is empty.
    """
    B, N = a.shape[0], c.shape[0]
    fused = _fused(a, c, clamp, kernel)
    chunk = chunk or _auto_chunk(B, N, a.device)
    return _TailLSE.apply(a, c, ex_rows, ex_cols, float(clamp), int(chunk), fused)


def _fused(a: torch.Tensor, c: torch.Tensor, clamp: float, kernel: str) -> bool:
    """Whether `kernel` ("auto", "fused" or "torch") runs the fused kernel on these tensors."""
    fusable = a.device.type == "cpu" and a.dtype == c.dtype == torch.float32 and clamp * LOG2E < 126
    if kernel not in ("auto", "fused", "torch") or (kernel == "fused" and not fusable):
        raise ValueError(f"tail kernel {kernel!r}: use auto, torch, or fused (float32 on CPU, clamp < 87)")
    return kernel != "torch" and fusable


def sampled_tail_logsumexp(
    a: torch.Tensor,
    c: torch.Tensor,
    ex_rows: torch.Tensor,
    ex_cols: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    clamp: float = 40.0,
    kernel: str = "auto",
) -> torch.Tensor:
    """Sampled estimate of `tail_logsumexp` for catalogues too large to score per batch.

    One uniform sample S of `n_samples` distinct items is drawn per batch and shared by its users
    (one (B, |S|) block); `models.sampling.sampled_tail_lse` scales each user's sum over the sampled
    items of its tail R_b up to |R_b|. Bias: its log is low by about (1 - m_b/|R_b|) · CV²/(2 m_b) (m_b of
    the sampled items in the tail, CV² the squared coefficient of variation of e^{ŝ} over it): it
    vanishes when the sample covers the catalogue and grows as the student's score distribution
    sharpens, so the tail term is under-weighted late in training. Gradients reach sampled items only.
    `jobs/bench_student.py` measures the deficit against the exact tail.

    With the fused kernel (`kernel`, as in `tail_logsumexp`) the sum over S∖X_b is `tail_logsumexp` over
    the sampled rows of c, its exclusions moved to their places in S: one pass per sampled item instead of
    the (B, |S|) block's several (product, clamp, pads, log-sum-exp and their backward).

    The exclusion pairs may come raw (`list_pairs`: duplicates and -1 pads). On the fused path only the
    pairs that fall in S are sorted (`tail_kernels.sampled_pairs`), not all of them by item, whose scatter
    over the whole catalogue grew faster than the batch (docs/PERFORMANCE.md).

    Args:
        a, c, clamp, kernel: as in `tail_logsumexp`.
        ex_rows, ex_cols: (nnz,) int64 exclusion pairs, deduplicated or not, -1 columns ignored.
        n_samples: |S| (capped at N).
        generator: RNG for the sample (on c's device).

    Returns:
        (B,) estimated tail log-sum-exp (-inf where no sampled item falls in the tail).
    """
    B, N = a.shape[0], c.shape[0]
    n = min(int(n_samples), N)
    if 4 * n >= N:
        sample = torch.randperm(N, generator=generator, device=c.device)[:n]
    else:  # O(n) draw; a uniform random subset given its size
        sample = torch.unique(torch.randint(0, N, (n,), generator=generator, device=c.device))
    if not _fused(a, c, clamp, kernel) or len(sample) == 0:
        ex_rows, ex_cols = exclusion(ex_rows, ex_cols, B, N)
        return sampled_tail_lse((a @ c[sample].T).clamp(-clamp, clamp), sample, ex_rows, ex_cols, N)
    where = torch.full((N,), -1, dtype=torch.int64)
    where[sample] = torch.arange(len(sample))
    n_ex, rows, pos = (
        torch.from_numpy(x)
        for x in tail_kernels.sampled_pairs(ex_rows.numpy(), ex_cols.numpy(), B, where.numpy(), len(sample))
    )
    # rows, pos: sorted by sampled item, as the kernel reads them
    scale, kept = log_scale_from_counts(n_ex, len(sample), torch.bincount(rows, minlength=B), N, a.dtype)
    lse = tail_logsumexp(a, c[sample], rows, pos, clamp, kernel="fused")
    return torch.where(kept > 0, lse + scale, torch.full_like(lse, float("-inf")))


def tail_estimator(
    kind: str,
    clamp: float,
    chunk: int,
    n_samples: int,
    generator: torch.Generator | None,
    kernel: str = "auto",
):
    """The tail log-sum-exp a run asks for (``student.tail``), as a function (a, c, rows, cols) -> (B,) of
    exclusion pairs as `list_pairs` gives them (duplicates and -1 pads allowed).

    Args:
        kind: "sampled" for `sampled_tail_logsumexp`, anything else for the exact `tail_logsumexp`.
        clamp, chunk, kernel: as in `tail_logsumexp`.
        n_samples, generator: as in `sampled_tail_logsumexp`.
    """
    if kind == "sampled":
        return lambda a, c, rows, cols: sampled_tail_logsumexp(
            a, c, rows, cols, n_samples, generator, clamp, kernel
        )
    return _exact_tail(clamp, chunk, kernel)


def _exact_tail(clamp: float, chunk: int = 0, kernel: str = "auto"):
    """`tail_logsumexp` as a `tail_estimator` function: the raw pairs deduplicated and sorted first."""

    def fn(a: torch.Tensor, c: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return tail_logsumexp(a, c, *exclusion(rows, cols, a.shape[0], c.shape[0]), clamp, chunk, kernel)

    return fn


# ---------------------------------------------------------------------------------- list terms
def list_logits(a: torch.Tensor, c: torch.Tensor, items: torch.Tensor, clamp: float = 40.0) -> torch.Tensor:
    """(B, L) clamped logits ŝ of per-user item lists (B, L) (pads give a finite dummy value)."""
    return torch.einsum("bd,bld->bl", a, c[items.clamp(min=0)]).clamp(-clamp, clamp)


def per_item_tail_nll(logits: torch.Tensor, valid: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Per-user Σ_i -log(e^{ŝ_i} / (e^{ŝ_i} + e^{tail})) = Σ_i softplus(tail - ŝ_i): each item's own
    softmax against the tail (L_O's terms).

    Args:
        logits: (B, L) ŝ of the items (any order).
        valid: (B, L) bool, False at pads.
        tail: (B,) log-sum-exp of the tail set.

    Returns:
        (B,) per-user sums.
    """
    return (functional.softplus(tail[:, None] - logits) * valid).sum(1)


def pl_loss(
    logits: torch.Tensor,
    valid: torch.Tensor,
    tail: torch.Tensor,
    weights: torch.Tensor | None = None,
    subtract_raw: bool = False,
) -> torch.Tensor:
    """Per-user Plackett-Luce loss of an ordered list above a tail set, optionally with per-term weights:

        loss_b = Σ_{k valid} w_k [log(Σ_{l>=k, valid} e^{ŝ_l} + e^{tail_b}) - ŝ_k]

    Invalid entries may sit anywhere in the row: they are skipped, and never join a suffix sum.

    Args:
        logits: (B, L) ŝ of the ordered list, best first.
        valid: (B, L) bool.
        tail: (B,) log-sum-exp of the tail set (-inf, or PAD_LOGIT or less, for an empty tail).
        weights: optional (B, L) weight of each term (default 1).
        subtract_raw: each term subtracts the unmasked logit, so the pads must be finite (clamped list
            logits are). Same values; but the logits then take two gradient edges instead of one, which
            changes the order autograd sums a caller's gradients in (the last bit): L_F keeps the order
            it was trained with, the baselines theirs.

    Returns:
        (B,) per-user losses.
    """
    x = logits.masked_fill(~valid, PAD_LOGIT)
    suffix = torch.logcumsumexp(x.flip(1), 1).flip(1)
    denom = torch.logaddexp(suffix, tail[:, None])
    # each form as its callers always computed it, down to the sign of an empty row's zero
    terms = (denom - logits) * valid if subtract_raw else (x - denom) * valid
    if weights is not None:
        terms = terms * weights
    return terms.sum(1) if subtract_raw else -terms.sum(1)


def masked_logsumexp(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log Σ_{j: valid[b, j]} e^{logits[b, j]} per row.

    Args:
        logits: (B, N) scores.
        valid: (B, N) bool, True for the entries of the set.

    Returns:
        (B,) log-sum-exp over the valid entries; about PAD_LOGIT for a row with none (its e^{...} is 0, so
        it adds nothing to a logaddexp).
    """
    return torch.logsumexp(logits.masked_fill(~valid, PAD_LOGIT), 1)


# ---------------------------------------------------------------------------- HetComp's losses
def l_o(
    a: torch.Tensor,
    c: torch.Tensor,
    pos: torch.Tensor,
    targets: torch.Tensor,
    ex_rows: torch.Tensor,
    ex_cols: torch.Tensor,
    clamp: float = 40.0,
    tail_fn=None,
) -> torch.Tensor:
    """Per-user L_O (B,) for P+ `pos` (B, P) and targets T `targets` (B, K), both -1 padded.

    Args:
        a, c: factorised logits (see `tail_logsumexp`).
        ex_rows, ex_cols: each user's train items (raw pairs; targets are added here).
        tail_fn: (a, c, rows, cols) -> (B,) tail log-sum-exp; default the exact `tail_logsumexp`.
    """
    tail_fn = tail_fn or _exact_tail(clamp)
    tail = tail_fn(a, c, *list_pairs(ex_rows, ex_cols, targets))
    items = torch.cat([pos, targets], 1)
    return per_item_tail_nll(list_logits(a, c, items, clamp), items >= 0, tail)


def l_f(
    a: torch.Tensor,
    c: torch.Tensor,
    pos: torch.Tensor,
    targets: torch.Tensor,
    ex_rows: torch.Tensor,
    ex_cols: torch.Tensor,
    clamp: float = 40.0,
    tail_fn=None,
) -> torch.Tensor:
    """Per-user L_F (B,): PL(P+; N_u\\T^a) + ½[PL(T^a; N_u\\T^a) + PL(T^b; N_u\\T^b)].

    T^a = T[:K//2], T^b = T[:K//10] for targets of width K (50 and 10 at K = 100). The second tail
    is derived exactly from the first: N_u\\T^b = (N_u\\T^a) ∪ (T^a\\T^b), a sum of positives.
    Arguments as in `l_o`.
    """
    tail_fn = tail_fn or _exact_tail(clamp)
    ka, kb = max(1, targets.shape[1] // 2), max(1, targets.shape[1] // 10)
    ta = targets[:, :ka]
    tail_a = tail_fn(a, c, *list_pairs(ex_rows, ex_cols, ta))
    s_ta, v_ta = list_logits(a, c, ta, clamp), ta >= 0
    tail_b = torch.logaddexp(tail_a, masked_logsumexp(s_ta[:, kb:], v_ta[:, kb:]))
    s_pos = list_logits(a, c, pos, clamp)
    pl = functools.partial(pl_loss, subtract_raw=True)
    return pl(s_pos, pos >= 0, tail_a) + 0.5 * (
        pl(s_ta, v_ta, tail_a) + pl(s_ta[:, :kb], v_ta[:, :kb], tail_b)
    )
