"""I-AE teacher: the Mult-VAE family on item columns (METHOD.md §2).

Item i's input is its train column y_i (the users who have it); the model reconstructs it with a
multinomial over users. The score of user u for item i is the decoder's output for column u at
z_i = mu(y_i): with the linear last layer that is f(z_i) . W_u + b_u, and b_u is the same for all of
u's items -- so ranking is a dot product between a per-user decoder row W_u and a per-item feature
f(z_i), and FAISS retrieves it like any embedding model. The per-item features are computed once
per parameter state (in eval mode) from the item columns, in blocks.

Scale. The exact input layer is n_users wide (600 x 1M weights plus their Adam moments, ~7 GiB at a
million users). With ``teachers.iae_hash_buckets = H > 0`` an item's (normalised, dropped-out) column
is feature-hashed into H signed buckets (Weinberger et al., 2009: user u adds sign(u) * y_iu to bucket
h(u)), so the encoder is H x hidden whatever the user count; colliding users share a bucket, the
signs keep their sum unbiased. The decoder scores every user per item -- that is the model, and its
(items x users) logits block is what a batch costs: `teachers.iae_max_logits` caps the item batch so
the block stays bounded (64 items at 1M users with the default). With ``teachers.iae_decoder_samples`` the
training's block is (items x sampled users) instead (`vae.log_normaliser`), and with
``teachers.sparse_updates`` too a step updates only those users' decoder rows (`VAECore.dec_rows`, lazy
row-wise Adam), so an epoch costs O(items x samples), not O(items x users); scoring is unchanged.

Ranking. The softmax over users is unchanged by adding a constant to all of one item's logits, so the
logit W_u . f_i holds a per-item offset that the loss never fixes, and it moves the item's rank in every
user's list (the scale bench's item-AE: valid R@50 .045 / .056 / .263 / .227 over its four states at 100k
users). ``teachers.iae_score = log_softmax`` ranks by log p(u | i) = W_u . f_i + b_u - lse_i instead, lse_i
item i's log normaliser over every user (b_u is the same for all of u's items): computed exactly once per
parameter state, in blocks of users, items x users multiply-adds like one exact scoring of every user;
still a dot product, [W_u, 1] . [f_i, -lse_i]. On the same four states: .051 / .163 / .288 / .267.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.sampling import sparse_rows, transpose
from hetcomp_dist.models.vae import (
    VAECore,
    _AnnealedBeta,
    blocked_linear_lse,
    multinomial_vae_loss,
    vae_batches,
)

_ENCODE_BLOCK = 4096  # items per encoding block
# (items, users) blocks of the log normalisers (iae_score = log_softmax): 4096 x 4096 floats, 64 MiB, whatever
# the catalogue (one block of every item x 16,384 users took the 100k-user item-AE from 2.15 to 3.41 GiB)
_LSE_ITEMS = 4096
_LSE_BLOCK = 4096


def hash_users(users: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket (n,) int64 in [0, n_buckets), sign (n,) float32 +-1) of user ids: the high bits of two
    multiplicative (Fibonacci) hashes, a fixed function of the id."""
    u = users.astype(np.uint64)
    bucket = ((u * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) % np.uint64(n_buckets)
    sign = ((u * np.uint64(0xC2B2AE3D27D4EB4F)) >> np.uint64(63)).astype(np.float32)
    return bucket.astype(np.int64), 1.0 - 2.0 * sign


class ItemAE(_AnnealedBeta):
    """Item-based Mult-VAE.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (as MultVAE, and iae_hash_buckets, iae_max_logits).
        train: the full train lists (user-major); required, its transpose is the model's input.
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        if train is None:
            raise ValueError("ItemAE needs the train lists (its inputs are the item columns)")
        self.n_users, self.n_items, self.dim, self.drop = n_users, n_items, cfg.dim, cfg.ae_dropout
        self.buckets, self.samples = cfg.iae_hash_buckets, cfg.iae_decoder_samples
        # a batch's logits block is (items, users), or (items, sampled users) with iae_decoder_samples
        width = min(self.samples, n_users) if self.samples else n_users
        self.max_batch = max(1, cfg.iae_max_logits // max(width, 1))
        sparse = cfg.sparse_updates and 0 < self.samples < n_users  # sampled columns: row-wise updates
        self.core = VAECore(
            n_users,
            cfg.ae_hidden,
            cfg.dim,
            cfg.ae_decoder_hidden,
            n_in=self.buckets,
            sparse=sparse,
        )
        self.core.lse_block = cfg.iae_softmax_block  # the exact normaliser in blocks of users (vae.py)
        self.normalised = cfg.iae_score == "log_softmax"
        self.columns = transpose(train, n_items)
        self._init_anneal(cfg.ae_beta, cfg.ae_anneal_steps)
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `batch_size` items (at most `iae_max_logits` // the block's width: the (items, users)
        or (items, sampled users) logits block stays bounded), their train columns; `train` must be the
        constructor's."""
        if len(train.items) != len(self.columns.items):
            self.columns = transpose(train, self.n_items)
        size = min(batch_size, self.max_batch)
        for batch in vae_batches(self.columns, self.n_users, self.dim, rng, size, self.drop, self.samples):
            yield {**batch, "x": self._input(batch["x"])}

    def _input(self, columns: torch.Tensor) -> torch.Tensor:
        """The encoder's sparse input of sparse (B, n_users) item columns: themselves, or hashed to (B, H)."""
        if not self.buckets:
            return columns
        idx, values = columns.indices(), columns.values()
        bucket, sign = hash_users(idx[1].numpy(), self.buckets)
        hashed = torch.stack([idx[0], torch.from_numpy(bucket)])
        return torch.sparse_coo_tensor(
            hashed, values * torch.from_numpy(sign), (columns.shape[0], self.buckets), check_invariants=False
        ).coalesce()

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return multinomial_vae_loss(self.core, batch, self.beta())

    @torch.no_grad()
    def item_features(self) -> torch.Tensor:
        """(n_items, f) decoder features f(mu(y_i)) of every item, computed in blocks."""
        dev = self.core.dec.weight.device
        out = []
        for s in range(0, self.n_items, _ENCODE_BLOCK):
            rows = np.arange(s, min(s + _ENCODE_BLOCK, self.n_items))
            mu, _ = self.core.encode(self._input(sparse_rows(self.columns, rows, self.n_users)).to(dev))
            out.append(self.core.features(mu))
        return torch.cat(out)

    @torch.no_grad()
    def log_normalisers(self, feats: torch.Tensor) -> torch.Tensor:
        """(n_items,) lse_i = log sum_u exp(W_u . f_i + b_u) over every user, for item features `feats`,
        in (items, users) blocks of bounded size (never an (items x users) array)."""
        w, b = self.core.dec.weight, self.core.dec.bias
        parts = [
            blocked_linear_lse(feats[i : i + _LSE_ITEMS], w, b, _LSE_BLOCK)
            for i in range(0, len(feats), _LSE_ITEMS)
        ]
        return torch.cat(parts)

    def _features(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(item features (n_items, f), their log normalisers (n_items,) or None when ranking by logit),
        cached in eval mode."""
        if self.training or self._cache is None:
            feats = self.item_features()
            out = (feats, self.log_normalisers(feats) if self.normalised else None)
            if self.training:
                return out
            self._cache = out
        return self._cache

    def train(self, mode: bool = True) -> ItemAE:
        self._cache = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._cache = None
        return super().load_state_dict(*args, **kwargs)

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) logits of column u for every item, or with iae_score = log_softmax log p(u | i)
        (either without b_u, constant per user)."""
        feats, lse = self._features()
        out = self.core.dec.weight[users] @ feats.T
        return out if lse is None else out.sub_(lse)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str]:
        feats, lse = self._features()
        user = self.core.dec.weight.detach()
        if lse is None:
            return user.cpu().numpy(), feats.cpu().numpy(), "ip"
        ones = torch.ones(len(user), 1, dtype=user.dtype, device=user.device)
        item = torch.cat([feats, -lse[:, None]], 1)
        return torch.cat([user, ones], 1).cpu().numpy(), item.cpu().numpy(), "ip"
