"""MF teacher: s(u, i) = p_u . q_i trained with BPR and one sampled negative (METHOD.md §2)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.rowwise import lookup
from hetcomp_dist.models.sampling import PairIndex, pair_batches, sample_negatives


class MF(Recommender):
    """Matrix factorisation with the BPR loss.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (dim, l2, sparse_updates).
        train: unused (kept so every teacher is built the same way).
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.l2, self.sparse = n_users, n_items, cfg.l2, cfg.sparse_updates
        self.user = torch.nn.Parameter(torch.randn(n_users, cfg.dim) * 0.01)
        self.item = torch.nn.Parameter(torch.randn(n_items, cfg.dim) * 0.01)
        self._keys: PairIndex | None = None

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        if self._keys is None or len(self._keys) != len(train.items):
            self._keys = PairIndex(train)
        for u, i in pair_batches(train, rng, batch_size):
            j = sample_negatives(self._keys, u, self.n_items, rng, 1)[:, 0]
            yield {
                "user": torch.from_numpy(u),
                "pos": torch.from_numpy(i.astype(np.int64)),
                "neg": torch.from_numpy(j),
            }

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """BPR: -log sigma(s(u,i) - s(u,j)), mean over the batch, plus L2 on the touched rows."""
        p = lookup(self.user, batch["user"], self.sparse)
        qi, qj = lookup(self.item, batch["pos"], self.sparse), lookup(self.item, batch["neg"], self.sparse)
        diff = (p * qi).sum(1) - (p * qj).sum(1)
        reg = (p.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(p)
        return -functional.logsigmoid(diff).mean() + self.l2 * reg

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) dot products."""
        return self.user[users] @ self.item.T

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str]:
        return self.user.detach().cpu().numpy(), self.item.detach().cpu().numpy(), "ip"
