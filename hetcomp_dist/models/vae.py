"""AE teacher: Mult-VAE over each user's train row (METHOD.md §2); CDAE as an option.

Mult-VAE (Liang et al., 2018): x_u normalised to unit length, dropout, encoder
I -> ae_hidden (tanh) -> (mu, log sigma^2) of dimension `dim`; decoder latent -> items (linear, or
latent -> ae_decoder_hidden (tanh) -> items); loss = multinomial log-likelihood + beta * KL with
beta annealed linearly to ae_beta over ae_anneal_steps optimiser steps. Inputs are sparse, so the
encoder costs O(nnz x hidden); only the decoder's (B, n_items) block is dense -- or, with
``teachers.ae_decoder_samples`` (scale), a (B, samples) block: the softmax's normaliser is the row's own
targets plus the other items estimated from a uniform sample (`log_normaliser`); with
``teachers.sparse_updates`` a step then updates only the sampled and target items' decoder rows (lazy
row-wise Adam, models/rowwise.py), not the whole n_items-wide layer, and the encoder's input layer only
the rows of the items the batch's inputs hold (`VAECore.sparse_input`). Scoring is unchanged.

CDAE (Wu et al., 2016): corrupted row -> tanh(W x + V_u + b) -> sigmoid over items, BCE loss.

`VAECore` and `multinomial_vae_loss` are shared with the item-based I-AE (iae.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.rowwise import lookup, lookup_entries
from hetcomp_dist.models.sampling import rows_of, sampled_tail_lse, sparse_rows

_ENCODE_BLOCK = 4096  # users per encoding block in `candidate_embeddings`
# where the training's log-variance stops being exponentiated: the KL term grows as exp(logvar), so one
# batch with a large logvar (the item-AE at 300k users and lr 1e-2 reached a KL of ~1e17 in one step,
# docs/PERFORMANCE.md) swamps an epoch's loss and its Adam moments. A posterior variance of e^10 ~ 2e4
# against the prior's 1 is already noise; trained models stay below it, where nothing changes
LOGVAR_MAX = 10.0


class VAECore(torch.nn.Module):
    """Encoder/decoder of a Mult-VAE over `n_cols`-wide sparse rows.

    Args:
        n_cols: output width (and input width unless `n_in` is given).
        hidden: encoder hidden width.
        dim: latent dimension.
        dec_hidden: decoder hidden width, 0 = linear decoder.
        n_in: input width when the input is not the row itself (I-AE's hashed columns); 0 = n_cols.
        sparse: the training's decoder rows are looked up with sparse gradients (`dec_rows`), so a
            sampled softmax's step updates its sampled and target columns only (`RowwiseAdam`), not
            the whole n_cols-wide layer: O(batch) per step, where the dense layer's update costs O(n_cols).
        sparse_input: the encoder's input layer is a sum of the input's rows of `enc_weight`
            (`embedding_bag`) whose gradient is sparse, so a step updates the rows of the columns its
            inputs hold, not all n_in (the sparse product's gradient is a dense (n_in, hidden) matrix).
    """

    def __init__(
        self,
        n_cols: int,
        hidden: int,
        dim: int,
        dec_hidden: int = 0,
        n_in: int = 0,
        sparse: bool = False,
        sparse_input: bool = False,
    ) -> None:
        super().__init__()
        self.sparse, self.sparse_input = sparse, sparse_input
        self.lse_block = 0  # > 0: the exact normaliser over blocks of this many columns (log_normaliser)
        # encoder weight stored (n_in, hidden): sparse x @ W needs no transpose copy in backward
        self.enc_weight = torch.nn.Parameter(torch.empty(n_in or n_cols, hidden))
        self.enc_bias = torch.nn.Parameter(torch.zeros(hidden))
        torch.nn.init.xavier_normal_(self.enc_weight)
        self.enc_out = torch.nn.Linear(hidden, 2 * dim)
        self.dec_hidden = torch.nn.Linear(dim, dec_hidden) if dec_hidden else None
        self.dec = torch.nn.Linear(dec_hidden or dim, n_cols)
        for lin in (self.enc_out, self.dec, self.dec_hidden):
            if lin is not None:
                torch.nn.init.xavier_normal_(lin.weight)
                torch.nn.init.normal_(lin.bias, std=0.001)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, dim), of a sparse (B, n_in) input."""
        if self.sparse_input:
            x = x.coalesce()  # row-major entries: each row's bag is contiguous
            rows, cols = x.indices()
            offsets = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
            offsets[1:] = torch.bincount(rows, minlength=x.shape[0]).cumsum(0)[:-1]
            bag = functional.embedding_bag(
                cols, self.enc_weight, offsets, mode="sum", per_sample_weights=x.values(), sparse=True
            )
            h = torch.tanh(bag + self.enc_bias)
        else:
            h = torch.tanh(torch.sparse.mm(x, self.enc_weight) + self.enc_bias)
        mu, logvar = self.enc_out(h).chunk(2, dim=1)
        return mu, logvar

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """(B, f) input of the decoder's last (linear) layer."""
        return torch.tanh(self.dec_hidden(z)) if self.dec_hidden is not None else z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, n_cols) logits."""
        return self.dec(self.features(z))

    def dec_rows(self, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((len(cols), f) decoder weight rows, (len(cols),) biases) of columns `cols`; their gradients
        sparse when the core is (`sparse`)."""
        return (
            lookup(self.dec.weight, cols, self.sparse),
            lookup_entries(self.dec.bias, cols, self.sparse),
        )


def multinomial_vae_loss(core: VAECore, batch: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """Mean over rows of -sum_j x_j log softmax(logits)_j + beta * KL(q(z|x) || N(0, I)).

    batch: "x" sparse corrupted input (B, n), "rows"/"cols" the uncorrupted target entries,
    "eps" (B, dim) reparameterisation noise (drawn by `batches`, so an epoch is reproducible), and
    optionally "sample": the columns the softmax's normaliser is estimated from (`log_normaliser`).
    """
    mu, logvar = core.encode(batch["x"])
    # past LOGVAR_MAX the variance is linearised (value and slope of exp at the bound) and the sample's
    # noise capped there: finite, and the KL still pulls logvar back; below it, exactly the plain terms
    over = (logvar - LOGVAR_MAX).clamp(min=0.0)
    capped = logvar - over
    var = capped.exp() + over * math.exp(LOGVAR_MAX)
    z = mu + batch["eps"] * torch.exp(0.5 * capped)
    f = core.features(z)
    # -sum_j x_j log softmax_j = n * logsumexp(logits) - sum_{j in x} logit_j; the picked logits are
    # computed from their decoder rows, so no (B, n_cols) index/scatter in the backward pass
    rows, cols = batch["rows"], batch["cols"]
    w, b = core.dec_rows(cols)
    picked = (f[rows] * w).sum(1) + b
    lse = log_normaliser(core, f, rows, cols, picked, batch.get("sample"))
    counts = torch.bincount(rows, minlength=len(mu)).to(lse.dtype)
    nll = ((counts * lse).sum() - picked.sum()) / len(mu)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - var, dim=1).mean()
    return nll + beta * kl


def log_normaliser(
    core: VAECore,
    f: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    picked: torch.Tensor,
    sample: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) log Σ_j e^{logit_bj} over the decoder's columns for features f (B, f): exact, from the whole
    (B, n_cols) logits block; or, given a `sample` of distinct columns, the row's own targets (rows, cols,
    their `picked` logits) exactly plus the rest estimated from the sampled columns
    (`sampling.sampled_tail_lse`: sampled softmax, a (B, |sample|) block)."""
    if sample is None:
        if 0 < core.lse_block < core.dec.out_features:
            return _BlockedLinearLSE.apply(f, core.dec.weight, core.dec.bias, core.lse_block)
        return torch.logsumexp(core.dec(f), dim=1)
    B = f.shape[0]
    top = torch.full((B,), float("-inf"), dtype=f.dtype, device=f.device)
    top = top.scatter_reduce(0, rows, picked.detach(), "amax")  # a stable shift per row
    own = torch.zeros(B, dtype=f.dtype, device=f.device).index_add(0, rows, torch.exp(picked - top[rows]))
    w, b = core.dec_rows(sample)
    logits = f @ w.T + b
    rest = sampled_tail_lse(logits, sample, rows, cols, core.dec.out_features)
    return torch.logaddexp(torch.log(own) + top, rest)


def blocked_linear_lse(f: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, block: int) -> torch.Tensor:
    """(B,) log Σ_j exp(f_b . W_j + b_j) over the rows j of a linear layer, `block` rows at a time (no
    (B, rows) array): the value of `_BlockedLinearLSE`, without its gradient."""
    lse = None
    for s in range(0, weight.shape[0], block):
        part = torch.logsumexp(torch.addmm(bias[s : s + block], f, weight[s : s + block].T), dim=1)
        lse = part if lse is None else torch.logaddexp(lse, part)
    return lse


class _BlockedLinearLSE(torch.autograd.Function):
    """(B,) log Σ_j exp(f_b . W_j + b_j) over the rows j of a linear layer, `block` rows at a time.

    Going forward only the running log-sum-exp is kept; going backward each block's logits are computed
    again and turned into its softmax share p = exp(logits - lse) * g, which gives grad f += p W_blk,
    grad W_blk = p^T f and grad b_blk = Σ_b p. One more product than the plain layer, but no (B, n_cols)
    array: the item-AE's (128 items x 300k users) block was 154 MB, allocated afresh (and page-faulted in)
    several times a step, more system time than compute (docs/PERFORMANCE.md).
    """

    @staticmethod
    def forward(ctx, f, weight, bias, block):
        lse = blocked_linear_lse(f, weight, bias, block)
        ctx.save_for_backward(f, weight, bias, lse)
        ctx.block = block
        return lse

    @staticmethod
    def backward(ctx, grad):
        f, weight, bias, lse = ctx.saved_tensors
        grad_f = torch.zeros_like(f)
        grad_w, grad_b = torch.empty_like(weight), torch.empty_like(bias)
        for s in range(0, weight.shape[0], ctx.block):
            w = weight[s : s + ctx.block]
            p = torch.addmm(bias[s : s + ctx.block], f, w.T).sub_(lse[:, None]).exp_().mul_(grad[:, None])
            grad_f.addmm_(p, w)
            torch.mm(p.T, f, out=grad_w[s : s + ctx.block])
            torch.sum(p, dim=0, out=grad_b[s : s + ctx.block])
        return grad_f, grad_w, grad_b, None


def vae_batches(
    lists: CSR,
    n_cols: int,
    dim: int,
    rng: np.random.Generator,
    batch_size: int,
    drop: float,
    samples: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch over the non-empty rows of `lists` (shuffled), as `multinomial_vae_loss` batches; with
    0 < `samples` < n_cols, each batch also holds that many distinct columns drawn uniformly ("sample")."""
    rows = np.nonzero(lists.lengths() > 0)[0]
    rows = rows[rng.permutation(len(rows))]
    for s in range(0, len(rows), batch_size):
        r = rows[s : s + batch_size]
        target = lists.take(r)
        batch = {
            "x": sparse_rows(lists, r, n_cols, normalise=True, drop=drop, rng=rng),
            "rows": torch.from_numpy(np.repeat(np.arange(len(r)), target.lengths())),
            "cols": torch.from_numpy(target.items.astype(np.int64)),
            "eps": torch.from_numpy(rng.standard_normal((len(r), dim), dtype=np.float32)),
            "index": torch.from_numpy(r.astype(np.int64)),
        }
        if 0 < samples < n_cols:
            batch["sample"] = torch.from_numpy(rng.choice(n_cols, samples, replace=False).astype(np.int64))
        yield batch


class _AnnealedBeta(Recommender):
    """Shared step counter for the KL annealing (a buffer, so it survives checkpoint/resume)."""

    def _init_anneal(self, beta: float, steps: int) -> None:
        self.beta_max, self.anneal_steps = beta, max(1, steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def beta(self) -> float:
        return min(self.beta_max, float(self.step) / self.anneal_steps)

    def after_step(self) -> None:
        self.step += 1


class MultVAE(_AnnealedBeta):
    """User-based Mult-VAE; scores a user from its train row.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (dim, ae_hidden, ae_decoder_hidden, ae_dropout, ae_beta, ae_anneal_steps).
        train: unused at construction (rows are passed to `batches` / `scores`).
    """

    exact_candidates = True  # the decoder's last layer is f(mu_u) . W_i + b_i: `candidate_embeddings`

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim, self.drop = n_users, n_items, cfg.dim, cfg.ae_dropout
        self.samples = cfg.ae_decoder_samples
        sampled = 0 < self.samples < n_items
        self.core = VAECore(
            n_items,
            cfg.ae_hidden,
            cfg.dim,
            cfg.ae_decoder_hidden,
            sparse=cfg.sparse_updates and sampled,
            sparse_input=cfg.sparse_updates,
        )
        self._init_anneal(cfg.ae_beta, cfg.ae_anneal_steps)

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `batch_size` users (their train rows; items sampled for the normaliser when
        ``teachers.ae_decoder_samples`` is set)."""
        return vae_batches(train, self.n_items, self.dim, rng, batch_size, self.drop, self.samples)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return multinomial_vae_loss(self.core, batch, self.beta())

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) decoder logits at z = mu of each user's train row (train must hold the users)."""
        if train is None:
            raise ValueError("MultVAE scores users from their train rows: pass train")
        x = sparse_rows(train, rows_of(train, users.cpu().numpy()), self.n_items).to(
            self.core.dec.weight.device
        )
        mu, _ = self.core.encode(x)
        return self.core.decode(mu)

    @torch.no_grad()
    def candidate_embeddings(self, train: CSR) -> tuple[np.ndarray, np.ndarray, str]:
        """([f(mu_u), 1], [W_i, b_i], "ip"): exact, the decoder's last layer is f(mu_u) . W_i + b_i."""
        if train.lo != 0 or train.n != self.n_users:
            raise ValueError("candidate_embeddings needs every user's train row (the whole train lists)")
        dev = self.core.dec.weight.device
        users = []
        for s in range(0, train.n, _ENCODE_BLOCK):
            rows = np.arange(s, min(s + _ENCODE_BLOCK, train.n))
            mu, _ = self.core.encode(sparse_rows(train, rows, self.n_items).to(dev))
            users.append(self.core.features(mu))
        user = torch.cat([torch.cat(users), torch.ones(train.n, 1, device=dev)], 1)
        item = torch.cat([self.core.dec.weight, self.core.dec.bias[:, None]], 1)
        return user.cpu().numpy(), item.cpu().numpy(), "ip"

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(P,) decoder logits of the pairs: each distinct user encoded once, one decoder row per pair."""
        if train is None:
            raise ValueError("MultVAE scores users from their train rows: pass train")
        distinct, row = torch.unique(users, return_inverse=True)
        x = sparse_rows(train, rows_of(train, distinct.cpu().numpy()), self.n_items)
        mu, _ = self.core.encode(x.to(self.core.dec.weight.device))
        f = self.core.features(mu)[row]
        return (f * self.core.dec.weight[items]).sum(1) + self.core.dec.bias[items]


class CDAE(Recommender):
    """Collaborative denoising autoencoder (the `ae_variant: cdae` option).

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (dim = hidden width, ae_dropout = corruption rate).
        train: unused at construction.
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.drop, self.l2 = n_users, n_items, cfg.ae_dropout, cfg.l2
        self.enc = torch.nn.Linear(n_items, cfg.dim)
        self.user = torch.nn.Parameter(torch.randn(n_users, cfg.dim) * 0.01)
        self.dec = torch.nn.Linear(cfg.dim, n_items)
        torch.nn.init.xavier_normal_(self.enc.weight)
        torch.nn.init.xavier_normal_(self.dec.weight)

    def _logits(self, x: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.sparse.mm(x, self.enc.weight.T) + self.enc.bias + self.user[users])
        return self.dec(h)

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `batch_size` users: corrupted binary rows (unnormalised) and their targets."""
        rows = np.nonzero(train.lengths() > 0)[0]
        rows = rows[rng.permutation(len(rows))]
        for s in range(0, len(rows), batch_size):
            r = rows[s : s + batch_size]
            target = train.take(r)
            yield {
                "x": sparse_rows(train, r, self.n_items, normalise=False, drop=self.drop, rng=rng),
                "user": torch.from_numpy(r.astype(np.int64) + train.lo),
                "rows": torch.from_numpy(np.repeat(np.arange(len(r)), target.lengths())),
                "cols": torch.from_numpy(target.items.astype(np.int64)),
            }

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """BCE of the reconstruction against the full binary rows, summed over items, mean over users."""
        logits = self._logits(batch["x"], batch["user"])
        target = torch.zeros_like(logits)
        target[batch["rows"], batch["cols"]] = 1.0
        bce = functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(logits)
        return bce + self.l2 * self.user[batch["user"]].pow(2).sum() / len(logits)

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        if train is None:
            raise ValueError("CDAE scores users from their train rows: pass train")
        x = sparse_rows(train, rows_of(train, users.cpu().numpy()), self.n_items, normalise=False)
        return self._logits(x.to(self.dec.weight.device), users)
