"""The baselines' distillation losses (METHOD.md §4) as pure, vectorised torch functions.

Every function works on one batch of B users and returns the per-user loss ``(B,)``; the objectives
(``objectives/baselines.py``) sum them, scale by λ_KD and add the student's base loss. Inputs are the
student's logits (already clamped to ±40) gathered at item ids, with boolean masks for padding, so a
(B, n_items) block is the largest tensor ever needed.

Notation: a list ``pi`` is (B, L) item ids, best first, -1 padded; ``valid`` marks its real entries.
A tail set R enters a Plackett–Luce term only through its log-sum-exp ``tail_lse`` (B,), computed
exactly over the full catalogue (the student stage's item-blocked ``tail_logsumexp``; ``items_mask`` +
``losses.masked_logsumexp`` are its dense form, the tests' reference) or by a sampled estimator (the
student's). The PL term itself is HetComp's ``losses.pl_loss`` (with optional per-term weights):

    PL(pi; R) = -sum_k [ s_{pi_k} - log( sum_{l>=k} e^{s_{pi_l}} + sum_{j in R} e^{s_j} ) ]
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from hetcomp_dist.objectives.losses import PAD_LOGIT, masked_logsumexp, pl_loss

PAD = -1


# ------------------------------------------------------------------------------------ building blocks
def items_mask(n_items: int, *lists: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: True where the item occurs in any of the -1 padded (B, L_i) id lists."""
    B = lists[0].shape[0]
    mask = torch.zeros(B, n_items + 1, dtype=torch.bool, device=lists[0].device)
    for lst in lists:
        idx = torch.where(lst >= 0, lst, torch.full_like(lst, n_items)).long()  # pads -> spare column
        mask.scatter_(1, idx, True)
    return mask[:, :n_items]


def gather_list(logits: torch.Tensor, lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of a padded id list.

    Args:
        logits: (B, N) scores.
        lists: (B, L) item ids, -1 padded.

    Returns:
        ((B, L) scores, PAD_LOGIT at pads; (B, L) bool valid).
    """
    valid = lists >= 0
    s = torch.gather(logits, 1, lists.clamp(min=0).long())
    return s.masked_fill(~valid, PAD_LOGIT), valid


def union_patterns(lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row union of M id lists (each item once), and which lists hold each union item, as bits.

    Args:
        lists: (B, M, L) item ids, -1 padded (an id repeated within one list counts once).

    Returns:
        ((B, M*L) the distinct items of each row (ascending), -1 elsewhere; (B, M*L) int64: bit x of
        entry j is set when union[b, j] >= 0 occurs in lists[b, x], 0 at pads).
    """
    B, M, L = lists.shape
    srt, idx = torch.sort(lists.reshape(B, M * L), dim=1, stable=True)
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    union = torch.where(dup | (srt < 0), torch.full_like(srt, PAD), srt)
    run = torch.cumsum(~dup, dim=1) - 1  # each position's run of equal ids (a run starts at its union entry)
    owner = torch.div(
        idx, L, rounding_mode="floor"
    )  # the list of each position; stable: a run is in list order
    again = torch.zeros_like(dup)
    again[:, 1:] = dup[:, 1:] & (owner[:, 1:] == owner[:, :-1])  # the same id twice in one list
    bit = torch.bitwise_left_shift(torch.ones_like(owner), owner).masked_fill(again, 0)
    bits = torch.zeros_like(owner).scatter_add_(1, run, bit)  # distinct bits per run: their sum is their OR
    return union, torch.gather(bits, 1, run).masked_fill(union < 0, 0)


def rest_logsumexp(scores: torch.Tensor, patterns: torch.Tensor, m: int) -> torch.Tensor:
    """(B, M): log Σ_{j: patterns[b, j] != 0, bit x unset} e^{scores[b, j]} -- each list's complement
    in the union.

    One exp per union entry: the entries are summed per pattern (B, 2^M), and list x's complement is
    the sum over the patterns without bit x -- positive terms only, no cancellation. The sums are
    float64 (exact for score spreads up to ~700 within a row); PAD_LOGIT where a complement is empty.

    Args:
        scores: (B, U) scores of the union entries (any value at pads).
        patterns: (B, U) int64 bit sets from `union_patterns` (0 at pads).
        m: the number of lists M (the teachers: at most six, so 2^M sums per user are few).
    """
    valid = patterns != 0
    s = scores.double()
    top = s.detach().masked_fill(~valid, PAD_LOGIT).amax(1, keepdim=True)
    e = torch.exp((s - top).masked_fill(~valid, PAD_LOGIT))  # pads: exp(PAD_LOGIT) == 0 in float64 too
    sums = torch.zeros(len(e), 1 << m, dtype=e.dtype, device=e.device).scatter_add(1, patterns, e)
    codes = torch.arange(1 << m, device=e.device)[:, None]
    lacks = ((codes >> torch.arange(m, device=e.device)[None, :]) & 1 == 0).to(e.dtype)  # (2^M, M)
    rest = sums @ lacks
    tiny = torch.finfo(rest.dtype).tiny  # only exact zeros (empty complements) are clamped
    out = torch.where(rest > 0, torch.log(rest.clamp(min=tiny)) + top, torch.full_like(rest, PAD_LOGIT))
    return out.to(scores.dtype)


# ------------------------------------------------------------------------------------ RD
def rd_static_weights(n: int, lam: float = 1.0) -> torch.Tensor:
    """(n,) position weights w_r ∝ exp(-r/λ) for 0-based teacher ranks r, summing to 1."""
    w = torch.exp(-torch.arange(n, dtype=torch.float64) / lam)
    return (w / w.sum()).float()


def estimate_ranks(scores: torch.Tensor, ref_scores: torch.Tensor, n_items: int) -> torch.Tensor:
    """RD's rank estimate from a random reference sample: r̂ = floor((n-1) · |{j: s_j > s_i}| / |S|).

    Args:
        scores: (B, L) scores of the items to rank.
        ref_scores: (B, S) scores of S uniformly drawn items per user.
        n_items: size of the catalogue ranked.

    Returns:
        (B, L) float estimated 0-based ranks.
    """
    above = (ref_scores[:, None, :] > scores[:, :, None]).float().mean(2)
    return torch.floor((n_items - 1) * above)


def rd_dynamic_weights(est_ranks: torch.Tensor, mu: float = 0.1) -> torch.Tensor:
    """(B, L) dynamic weights tanh(max(μ (r̂ - r), 0)) for teacher ranks r = 0..L-1."""
    r = torch.arange(est_ranks.shape[1], dtype=est_ranks.dtype, device=est_ranks.device)
    return torch.tanh(torch.clamp(mu * (est_ranks - r), min=0.0))


def rd_loss(
    scores: torch.Tensor, valid: torch.Tensor, static_w: torch.Tensor, dynamic_w: torch.Tensor | None = None
) -> torch.Tensor:
    """RD: position-weighted pointwise loss on the teacher's top items, sum_r w_r · (-log σ(s_r)).

    The weights are w = static · dynamic over the valid positions, renormalised to sum 1 per user
    (a user whose weights are all 0 -- every item already ranked high enough -- contributes 0).

    Args:
        scores: (B, R) student scores of the teacher's top-R items, teacher order.
        valid: (B, R) bool.
        static_w: (R,) static position weights.
        dynamic_w: optional (B, R) dynamic weights (used after the warm-up epochs).

    Returns:
        (B,) per-user loss.
    """
    w = static_w[None, :].to(scores.dtype) * valid
    if dynamic_w is not None:
        w = w * dynamic_w.detach()
    w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
    return (w * functional.softplus(-scores) * valid).sum(1)


# ------------------------------------------------------------------------------------ MTD
def mtd_loss(
    teacher_pl: torch.Tensor, user_emb: torch.Tensor, teacher_emb: torch.Tensor, entropy_coef: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """MTD: per-user teacher weights w_u = softmax_x(<sg(e_u), t_x>); sum_x w_ux PL_x - c · H(w_u).

    Args:
        teacher_pl: (B, M) PL(π^x[:K]; rest) of each teacher's list.
        user_emb: (B, d) the student's user representations (gradient stopped here).
        teacher_emb: (M, d) learnable teacher vectors t_x.
        entropy_coef: c, the weight of the entropy bonus.

    Returns:
        ((B,) per-user loss, (B, M) the weights w).
    """
    w = torch.softmax(user_emb.detach() @ teacher_emb.T, dim=1)
    entropy = -(w * torch.log(w.clamp(min=1e-30))).sum(1)
    return (w * teacher_pl).sum(1) - entropy_coef * entropy, w


# ------------------------------------------------------------------------------------ CL-DRD
def cldrd_labels(groups: tuple[int, int, int]) -> torch.Tensor:
    """Relevance labels of one curriculum stage's list (fine, coarse, negatives).

    Fine item at 0-based teacher rank r gets 1/(r+1) (its exact order matters); every coarse item
    gets 1/(n_fine+1) (above the negatives, no order among them); negatives get 0.

    Returns:
        (n_fine + n_coarse + n_neg,) float labels.
    """
    n1, n2, n3 = groups
    fine = 1.0 / torch.arange(1, n1 + 1, dtype=torch.float64)
    return torch.cat(
        [fine, torch.full((n2,), 1.0 / (n1 + 1), dtype=torch.float64), torch.zeros(n3, dtype=torch.float64)]
    ).float()


def list_ranks(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based rank of each valid entry within its row by descending score (ties: lower index first)."""
    s = scores.detach().masked_fill(~valid, -math.inf)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, s.shape[1] + 1, device=s.device).expand_as(order).contiguous())
    return ranks


def lambda_mrr_loss(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pairwise LambdaMRR-style loss: sum over pairs y_i > y_j of |1/π_i - 1/π_j| · log(1 + e^{-(s_i - s_j)}).

    π is the 1-based rank of the item in the student's current order of the list (no gradient), so a
    pair weighs the change in reciprocal rank its swap would cause.

    Args:
        scores: (B, L) student scores.
        labels: (B, L) or (L,) relevance labels.
        valid: (B, L) bool.

    Returns:
        (B,) per-user loss.
    """
    labels = labels.expand_as(scores)
    inv = 1.0 / list_ranks(scores, valid).to(scores.dtype)
    pair = (labels[:, :, None] > labels[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    weight = (inv[:, :, None] - inv[:, None, :]).abs()
    diff = scores[:, :, None] - scores[:, None, :]
    return (functional.softplus(-diff) * weight * pair).sum((1, 2))


# ------------------------------------------------------------------------------------ DCD
def unobserved_ranks(
    logits: torch.Tensor, observed: torch.Tensor, items: torch.Tensor, cap: int | None = None
) -> torch.Tensor:
    """0-based rank of each listed item among the user's unobserved items: |{j ∉ O_u: s_j > s_i}|.

    With `cap`, ranks come from the top-`cap` unobserved scores only (a partial selection instead
    of a sort of the catalogue) and every rank >= cap is reported as cap -- exact below cap.

    Args:
        logits: (B, N) scores of the whole catalogue.
        observed: (B, N) bool, True for the user's train items.
        items: (B, L) item ids, -1 padded (pads get rank -1).
        cap: optional bound on the ranks computed exactly.

    Returns:
        (B, L) int64 ranks (min(rank, cap) with a cap).
    """
    s = logits.detach().masked_fill(observed, -math.inf)
    q = torch.gather(logits.detach(), 1, items.clamp(min=0).long()).contiguous()
    if cap is None or cap >= s.shape[1]:
        asc = torch.sort(s, dim=1).values  # observed items (-inf) first, never counted as above
        above = s.shape[1] - torch.searchsorted(asc, q, right=True)
    else:  # -top is ascending; |{top > q}| = |{-top < -q}|, which is cap when q is below all of them
        neg_top = -torch.topk(s, cap, dim=1).values
        above = torch.searchsorted(neg_top.contiguous(), -q, right=False)
    return torch.where(items >= 0, above, torch.full_like(above, -1))


def dcd_loss(
    scores: torch.Tensor, valid: torch.Tensor, delta: torch.Tensor, eps: float = 10.0
) -> torch.Tensor:
    """DCD: under-estimated teacher items (Δ > 0) above over-estimated ones (Δ < 0), weighted by tanh(|Δ|/ε).

    With w = tanh(|Δ|/ε), U = {k: Δ_k > 0} in teacher order and O = {k: Δ_k < 0}:
        loss = -sum_{k∈U} w_k [ s_k - log( sum_{l∈U, l>=k} e^{s_l} + sum_{j∈O} w_j e^{s_j} ) ]
    i.e. a weighted PL(U; O) where a large gap weighs a term more and an over-estimated item presses
    on the denominators in proportion to how far the student over-ranks it.

    Args:
        scores: (B, L) student scores of the teacher's top list, teacher order.
        valid: (B, L) bool.
        delta: (B, L) rank gaps r_student - r_teacher (no gradient).
        eps: ε of the tanh.

    Returns:
        (B,) per-user loss.
    """
    delta = delta.to(scores.dtype)
    w = torch.tanh(delta.abs() / eps)
    under = valid & (delta > 0)
    over = valid & (delta < 0)
    tail = masked_logsumexp(scores + torch.log(w.clamp(min=1e-30)), over)
    return pl_loss(scores, under, tail, weights=w)
