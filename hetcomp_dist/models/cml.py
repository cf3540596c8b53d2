"""ML teacher: collaborative metric learning, s(u, i) = -||p_u - q_i||^2 (METHOD.md §2).

Hinge loss [m + d(u,i)^2 - d(u,j)^2]_+ with margin m; with several sampled negatives the closest
one is used (CML's WARP-style hardest-of-U). Rows are clipped back into the unit ball after every
optimiser step (with sparse updates, only the rows the step changed: the others are in the ball already).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.rowwise import lookup, touched_rows
from hetcomp_dist.models.sampling import PairIndex, pair_batches, sample_negatives


class CML(Recommender):
    """Metric learning: users and items as points in the unit ball; closer = better.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (dim, cml_margin, cml_negatives, sparse_updates).
        train: unused.
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.margin, self.n_neg, self.sparse = cfg.cml_margin, cfg.cml_negatives, cfg.sparse_updates
        std = 1.0 / cfg.dim**0.5
        self.user = torch.nn.Parameter(torch.randn(n_users, cfg.dim) * std)
        self.item = torch.nn.Parameter(torch.randn(n_items, cfg.dim) * std)
        self._keys: PairIndex | None = None
        self.after_step()

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        if self._keys is None or len(self._keys) != len(train.items):
            self._keys = PairIndex(train)
        for u, i in pair_batches(train, rng, batch_size):
            j = sample_negatives(self._keys, u, self.n_items, rng, self.n_neg)
            yield {
                "user": torch.from_numpy(u),
                "pos": torch.from_numpy(i.astype(np.int64)),
                "neg": torch.from_numpy(j),
            }

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean hinge [m + d(u,i)^2 - min_j d(u,j)^2]_+ over the batch; neg is (B, U)."""
        p = lookup(self.user, batch["user"], self.sparse)
        d_pos = (p - lookup(self.item, batch["pos"], self.sparse)).pow(2).sum(1)
        d_neg = (p[:, None, :] - lookup(self.item, batch["neg"], self.sparse)).pow(2).sum(2).min(1).values
        return torch.relu(self.margin + d_pos - d_neg).mean()

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) negative squared distances."""
        p = self.user[users]
        return -(p.pow(2).sum(1, keepdim=True) - 2 * p @ self.item.T + self.item.pow(2).sum(1))

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str]:
        return self.user.detach().cpu().numpy(), self.item.detach().cpu().numpy(), "l2"

    @torch.no_grad()
    def after_step(self) -> None:
        """Clips the rows the step changed (every row, after a dense step) to the unit ball (CML's norm
        constraint)."""
        for w in (self.user, self.item):
            rows = touched_rows(w)
            if rows is None:
                w.div_(w.norm(dim=1, keepdim=True).clamp(min=1.0))
            else:
                w[rows] = w[rows] / w[rows].norm(dim=1, keepdim=True).clamp(min=1.0)
