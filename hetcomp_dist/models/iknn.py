"""Item-kNN teacher: s(u, i) = sum over j in train(u) of sim(j, i), over each item j's k nearest items.

sim is the cosine between two items' train columns, shrunk: |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink)
(`teachers.iknn_shrink`; 0 = the plain cosine, which lets rare pairs dominate); each item keeps its
`teachers.iknn_k` most similar other items (a sparse (n_items, k) table, never items x items). The table
is computed in one epoch, in blocks of items (a sparse product of their columns with the whole matrix,
reduced to the top k at once); scores are computed per block of users from their train lists.

RP3beta (`RP3Beta`, teacher `rp3`) is the same model with another item-item weight: a random walk's
transition probabilities with a popularity penalty (`rp3_table`), which ranks far better than the plain
cosine on sparse data (CiteULike valid R@50 .3068, against .2505 for the shrunk cosine and .1408 for the
plain one: docs/RESULTS.md).

Their trajectory is their one state repeated (E1 = E2 = E3 = E4). Neither has a training path to record,
and the neighbourhood size is no easy-to-hard axis: a smaller neighbourhood is not an easier ranking for the
student to follow (fewer, sharper terms; summing more neighbours drifts towards popularity instead), so
states made of neighbourhood sizes would feed DKC a sequence with no meaning. Computed in one epoch (the
teachers' defaults for `iknn` and `rp3`: one epoch, evaluated and snapshotted), each fits the teachers' loop
unchanged: the best epoch is 1, and the states nearest 25/50/75/100 % of it are all that epoch, exported
once and written to the four state folders.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse
import torch

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.sampling import rows_of

_BLOCK_ELEMS = 1 << 24  # similarities per dense (items, n_items) block of the neighbour search
_SCORE_ELEMS = 1 << 22  # (pair, neighbour) entries per scatter of the scores


def top_neighbours(
    left: scipy.sparse.csr_matrix,
    right: scipy.sparse.csr_matrix,
    k: int,
    weigh: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row i of the item-item product ``left @ right``, reweighted by `weigh`: its k largest entries
    other than (i, i), best first, in blocks of rows (never items x items at once).

    Args:
        left: (n_items, n_users) sparse.
        right: (n_users, n_items) sparse.
        k: neighbours per item (< n_items).
        weigh: ``weigh(block, s, e)`` -> the weights of rows [s, e) from their (e - s, n_items) product
            (may work in place), or None for the product itself.

    Returns:
        (neighbours (n_items, k) int32, weights (n_items, k) float32 >= 0); an item with fewer than k
        items of positive weight is padded with weight 0.
    """
    n_items = left.shape[0]
    neighbours = np.zeros((n_items, k), np.int32)
    weights = np.zeros((n_items, k), np.float32)
    step = max(1, _BLOCK_ELEMS // n_items)
    for s in range(0, n_items, step):
        e = min(s + step, n_items)
        block = torch.from_numpy((left[s:e] @ right).toarray().astype(np.float32, copy=False))
        if weigh is not None:
            block = weigh(block, s, e)
        block[torch.arange(e - s), torch.arange(s, e)] = -1.0  # never its own neighbour
        top, idx = torch.topk(block, k, dim=1)
        neighbours[s:e] = idx.numpy()
        weights[s:e] = top.clamp_min(0.0).numpy()
    return neighbours, weights


def _binary(train: CSR, n_items: int, row_values: np.ndarray | None = None) -> scipy.sparse.csr_matrix:
    """The (n_users, n_items) train matrix, entry (u, i) = row_values[u] (1 when None) for i in train(u)."""
    values = (
        np.ones(len(train.items), np.float32)
        if row_values is None
        else np.repeat(row_values, train.lengths())
    )
    return scipy.sparse.csr_matrix(
        (values.astype(np.float32), train.items, train.offsets), shape=(train.n, n_items)
    )


def neighbour_table(train: CSR, n_items: int, k: int, shrink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each item's k most similar other items by the shrunk cosine, best first.

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink): the cosine of the two train columns when
    shrink = 0; a shrink damps pairs that share few users.

    Args:
        train: the users' train lists.
        n_items: catalogue size.
        k: neighbours per item (< n_items).
        shrink: the shrink term (>= 0).

    Returns:
        (neighbours (n_items, k) int32, similarities (n_items, k) float32 >= 0); an item with fewer than
        k similar items is padded with similarity 0.
    """
    root = torch.from_numpy(np.sqrt(np.bincount(train.items, minlength=n_items)).astype(np.float32))
    ones = _binary(train, n_items)

    def cosine(block: torch.Tensor, s: int, e: int) -> torch.Tensor:
        return block.div_(torch.outer(root[s:e], root).add_(shrink).clamp_min_(1e-12))

    return top_neighbours(ones.T.tocsr(), ones, k, cosine)


def rp3_table(train: CSR, n_items: int, k: int, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """RP3beta's item-item walk weights: each item's k largest other items, best first.

    w(i, j) = sum over users u of (1/|U_i|)^alpha (1/|I_u|)^alpha, for u holding both i and j, divided by
    |U_j|^beta: a walk item i -> user -> item j whose transition probabilities are raised to alpha, with
    the popularity of the item reached penalised by beta.

    Args:
        train: the users' train lists.
        n_items: catalogue size.
        k: neighbours per item (< n_items).
        alpha: exponent of the transition probabilities (1 = the plain random walk P^3).
        beta: popularity penalty (0 = none).

    Returns:
        (neighbours (n_items, k) int32, weights (n_items, k) float32 >= 0), as `neighbour_table`.
    """
    degree = np.maximum(np.bincount(train.items, minlength=n_items), 1).astype(np.float64)
    user_step = np.power(np.maximum(train.lengths(), 1).astype(np.float64), -alpha)
    item_step = np.power(degree, -alpha).astype(np.float32)
    to_users = (scipy.sparse.diags(item_step) @ _binary(train, n_items).T).tocsr()  # (items, users)
    to_items = _binary(train, n_items, user_step)  # (users, items)
    penalty = torch.from_numpy(np.power(degree, -beta).astype(np.float32))
    return top_neighbours(to_users, to_items, k, lambda block, s, e: block.mul_(penalty))


class ItemKNN(Recommender):
    """Item-based kNN with the shrunk cosine similarity (`neighbour_table`).

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (iknn_k, iknn_shrink).
        train: unused (the table is computed from the lists `fit_epoch` is given).
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.cfg = cfg
        k = max(1, min(self.neighbourhood(cfg), n_items - 1))
        self.register_buffer("neighbours", torch.zeros(n_items, k, dtype=torch.int32))
        # a parameter no optimiser touches: the similarities are the model's weights (parameter counts,
        # its device), set by fit_epoch
        self.similarity = torch.nn.Parameter(torch.zeros(n_items, k), requires_grad=False)

    @staticmethod
    def neighbourhood(cfg: TeachersConfig) -> int:
        """Neighbours kept per item."""
        return cfg.iknn_k

    def table(self, train: CSR) -> tuple[np.ndarray, np.ndarray]:
        """(neighbours, weights) of every item, from the full train lists."""
        return neighbour_table(train, self.n_items, self.neighbours.shape[1], self.cfg.iknn_shrink)

    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def fit_epoch(
        self,
        train: CSR,
        rng: np.random.Generator,
        batch_size: int,
        optimizer: torch.optim.Optimizer | None,
    ) -> float:
        """Computes the neighbour table from the full train lists; returns 0.0 (item-kNN has no loss)."""
        neighbours, sims = self.table(train)
        with torch.no_grad():
            self.neighbours.copy_(torch.from_numpy(neighbours))
            self.similarity.copy_(torch.from_numpy(sims))
        return 0.0

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items): for each user, the summed similarity rows of its train items."""
        if train is None:
            raise ValueError("item-kNN scores users from their train lists")
        sub = train.take(rows_of(train, users.cpu().numpy()))
        device = self.similarity.device
        rows = torch.from_numpy(np.repeat(np.arange(len(users)), sub.lengths())).to(device)
        history = torch.from_numpy(sub.items.astype(np.int64)).to(device)
        k = self.neighbours.shape[1]
        out = torch.zeros(len(users), self.n_items, device=device)
        flat = out.view(-1)
        step = max(1, _SCORE_ELEMS // k)  # bounds the (pairs, k) index block of one scatter
        for s in range(0, len(history), step):
            items = history[s : s + step]
            cells = rows[s : s + step, None] * self.n_items + self.neighbours[items].long()
            flat.index_add_(0, cells.view(-1), self.similarity[items].view(-1))
        return out


class RP3Beta(ItemKNN):
    """RP3beta (Paudel et al. 2017): item-kNN whose weights are `rp3_table`'s three-step random walk
    user -> item -> user -> item, transitions raised to `rp3_alpha`, the item reached divided by its
    popularity to the `rp3_beta`; scored like item-kNN, one state like it.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (rp3_k, rp3_alpha, rp3_beta).
        train: unused.
    """

    @staticmethod
    def neighbourhood(cfg: TeachersConfig) -> int:
        return cfg.rp3_k

    def table(self, train: CSR) -> tuple[np.ndarray, np.ndarray]:
        return rp3_table(train, self.n_items, self.neighbours.shape[1], self.cfg.rp3_alpha, self.cfg.rp3_beta)
