"""ALS teacher: implicit-feedback matrix factorisation (Hu, Koren & Volinsky, ICDM 2008), s(u, i) = x_u . y_i.

It minimises  sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + lambda (sum_u |x_u|^2 + sum_i |y_i|^2)  over every
(user, item) pair, with p_ui = 1 and confidence c_ui = 1 + alpha for a train interaction, p_ui = 0 and
c_ui = 1 otherwise. One epoch is one ALS iteration -- every user row solved given the items, then every
item row given the users -- by the `implicit` package's conjugate-gradient solver on the sparse
confidence matrix, continuing from the current factors; so its iterations are its trajectory, and the
teachers' loop early-stops, snapshots and resumes it like any other teacher. The factors are ordinary
parameters (state dict, FAISS embeddings); `loss` is the same objective per block of users, computed
without a users x items matrix (the unobserved part through the (d, d) Gram matrix of the items).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse
import torch
from threadpoolctl import threadpool_limits

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender


def user_block(train: CSR, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """A block of users (relative rows of `train`) and their train pairs, as the objective reads them.

    Returns:
        {"user": (B,) absolute ids, "row": (P,) block position of each pair, "item": (P,) its item}.
    """
    sub = train.take(rows)
    return {
        "user": torch.from_numpy(rows.astype(np.int64) + train.lo),
        "row": torch.from_numpy(np.repeat(np.arange(len(rows)), sub.lengths())),
        "item": torch.from_numpy(sub.items.astype(np.int64)),
    }


class ALS(Recommender):
    """Implicit ALS, fitted by `implicit.cpu.als.AlternatingLeastSquares` one iteration per epoch.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (dim, als_alpha, als_reg).
        train: unused (the solver reads the lists `fit_epoch` is given).
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, cfg.dim
        self.alpha, self.reg = cfg.als_alpha, cfg.als_reg
        # implicit's own initialisation: uniform in [0, 0.01)
        self.user = torch.nn.Parameter(torch.rand(n_users, cfg.dim) * 0.01)
        self.item = torch.nn.Parameter(torch.rand(n_items, cfg.dim) * 0.01)
        self._confidence: scipy.sparse.csr_matrix | None = None

    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        return []  # the least-squares solver sets the factors

    def confidence(self, train: CSR) -> scipy.sparse.csr_matrix:
        """(n_users, n_items) sparse c_ui of the train pairs (cached for the lists it was built from)."""
        if self._confidence is None or self._confidence.nnz != len(train.items):
            if train.lo != 0 or train.n != self.n_users:
                raise ValueError("ALS fits on the full train lists (every user, from user 0)")
            data = np.full(len(train.items), 1.0 + self.alpha, dtype=np.float32)
            # copies: the lists may be read-only Arrow buffers, and implicit's kernels take writable ones
            self._confidence = scipy.sparse.csr_matrix(
                (data, train.items.copy(), train.offsets.copy()), shape=(self.n_users, self.n_items)
            )
        return self._confidence

    def fit_epoch(
        self,
        train: CSR,
        rng: np.random.Generator,
        batch_size: int,
        optimizer: torch.optim.Optimizer | None,
    ) -> float:
        """One ALS iteration from the current factors; returns the objective per user afterwards."""
        # imported here: the model registry is imported by every command, implicit only by this step
        from implicit.cpu.als import AlternatingLeastSquares

        confidence = self.confidence(train)
        # implicit parallelises over rows with its own OpenMP pool, sized like torch's (the teacher's
        # actor set that from its CPUs); BLAS threads inside those rows would oversubscribe the cores
        with threadpool_limits(1, "blas"):
            solver = AlternatingLeastSquares(
                factors=self.dim,
                regularization=self.reg,
                alpha=1.0,  # the confidences are in the matrix already
                iterations=1,
                num_threads=torch.get_num_threads(),
            )
            solver.user_factors = self.user.detach().cpu().numpy().copy()
            solver.item_factors = self.item.detach().cpu().numpy().copy()
            solver.fit(confidence, show_progress=False)
        with torch.no_grad():
            self.user.copy_(torch.from_numpy(solver.user_factors))
            self.item.copy_(torch.from_numpy(solver.item_factors))
        return self.objective(train, batch_size) / max(self.n_users, 1)

    @torch.no_grad()
    def objective(self, train: CSR, batch_size: int) -> float:
        """The whole objective (see the module docstring), in blocks of `batch_size` users."""
        device = self.user.device
        gram = self.item.T @ self.item
        total = 0.0
        for s in range(0, train.n, batch_size):
            block = user_block(train, np.arange(s, min(s + batch_size, train.n)))
            total += float(self._objective({k: v.to(device) for k, v in block.items()}, gram))
        return total

    def _objective(self, batch: dict[str, torch.Tensor], gram: torch.Tensor) -> torch.Tensor:
        """The batch's users' terms of the objective, plus their share (B / n_users) of the items' L2."""
        x = self.user[batch["user"]]
        s = (x[batch["row"]] * self.item[batch["item"]]).sum(1)
        # every pair as unobserved (c = 1, p = 0): x_u^T (Y^T Y) x_u; then the observed pairs' correction
        unobserved = ((x @ gram) * x).sum()
        observed = ((1.0 + self.alpha) * (1.0 - s) ** 2 - s**2).sum()
        l2 = x.pow(2).sum() + self.item.pow(2).sum() * len(x) / self.n_users
        return unobserved + observed + self.reg * l2

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Blocks of `batch_size` users in a random order, with their train pairs."""
        order = rng.permutation(train.n)
        for s in range(0, len(order), batch_size):
            yield user_block(train, order[s : s + batch_size])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective's terms of a block of users, per user."""
        return self._objective(batch, self.item.T @ self.item) / len(batch["user"])

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) dot products."""
        return self.user[users] @ self.item.T

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str]:
        return self.user.detach().cpu().numpy(), self.item.detach().cpu().numpy(), "ip"
