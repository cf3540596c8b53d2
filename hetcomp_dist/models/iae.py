"""I-AE teacher: the Mult-VAE family on item columns (METHOD.md §2).

Item i's input is its train column y_i (the users who have it); the model reconstructs it with a
multinomial over users. The score of user u for item i is the decoder's output for column u at
z_i = mu(y_i): with the linear last layer that is f(z_i) . W_u + b_u, and b_u is the same for all of
u's items -- so ranking is a dot product between a per-user decoder row W_u and a per-item feature
f(z_i), and FAISS retrieves it like any embedding model. The per-item features are computed once
per parameter state (in eval mode) from the item columns, in blocks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.sampling import sparse_rows, transpose
from hetcomp_dist.models.vae import VAECore, _AnnealedBeta, multinomial_vae_loss, vae_batches

_ENCODE_BLOCK = 4096  # items per encoding block


class ItemAE(_AnnealedBeta):
    """Item-based Mult-VAE.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (as MultVAE).
        train: the full train lists (user-major); required, its transpose is the model's input.
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        if train is None:
            raise ValueError("ItemAE needs the train lists (its inputs are the item columns)")
        self.n_users, self.n_items, self.dim, self.drop = n_users, n_items, cfg.dim, cfg.ae_dropout
        self.core = VAECore(n_users, cfg.ae_hidden, cfg.dim, cfg.ae_decoder_hidden)
        self.columns = transpose(train, n_items)
        self._init_anneal(cfg.ae_beta, cfg.ae_anneal_steps)
        self._cache: torch.Tensor | None = None

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `batch_size` items (their train columns); `train` must be the constructor's."""
        if len(train.items) != len(self.columns.items):
            self.columns = transpose(train, self.n_items)
        return vae_batches(self.columns, self.n_users, self.dim, rng, batch_size, self.drop)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return multinomial_vae_loss(self.core, batch, self.beta())

    @torch.no_grad()
    def item_features(self) -> torch.Tensor:
        """(n_items, f) decoder features f(mu(y_i)) of every item, computed in blocks."""
        dev = self.core.dec.weight.device
        out = []
        for s in range(0, self.n_items, _ENCODE_BLOCK):
            rows = np.arange(s, min(s + _ENCODE_BLOCK, self.n_items))
            mu, _ = self.core.encode(sparse_rows(self.columns, rows, self.n_users).to(dev))
            out.append(self.core.features(mu))
        return torch.cat(out)

    def _features(self) -> torch.Tensor:
        if self.training or self._cache is None:
            feats = self.item_features()
            if self.training:
                return feats
            self._cache = feats
        return self._cache

    def train(self, mode: bool = True) -> ItemAE:
        self._cache = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._cache = None
        return super().load_state_dict(*args, **kwargs)

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) logits of column u for every item (without b_u, constant per user)."""
        return self.core.dec.weight[users] @ self._features().T

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str]:
        return self.core.dec.weight.detach().cpu().numpy(), self._features().cpu().numpy(), "ip"
