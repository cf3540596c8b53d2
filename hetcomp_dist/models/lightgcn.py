"""GNN teacher: LightGCN, s(u, i) = e_u . e_i with e the mean of L+1 propagation layers, BPR loss.

Propagation is E^{k+1} = A_hat E^k over the user-item bipartite graph, A_hat = D^-1/2 A D^-1/2
(symmetric normalisation, no self loops), held as one sparse tensor of 2*nnz entries.

Training cost (`teachers.gnn_refresh_every`). Exact LightGCN (0, the default) propagates the whole
graph for every batch and back-propagates through it: a step costs O(L * nnz * d), an epoch
O(L * nnz^2 * d / batch) -- quadratic in the data at a fixed batch size. Its linear variant is a large
``teachers.gnn.batch_size`` (a few exact steps per epoch), which changes the optimisation as much as
the data. With k > 0 the model splits the final embedding of a node v into its own layer-0 row and its
neighbourhood part,

    e_v = (E0_v + H_v) / (L+1),   H = A_hat E0 + ... + A_hat^L E0,

and caches H, recomputed (without gradient) every k steps and at the start of every epoch. The
forward values are exact right after a refresh and stale by at most k steps of the neighbours' updates
after it. e is linear in E0, so its Jacobian (I + A_hat + ... + A_hat^L) / (L+1) never goes stale; the
batch's gradient reaches its own layer-0 rows through I, and the neighbourhood through
``teachers.gnn_walks`` random walks of L steps from every batch node: the node a walk reaches at hop k
receives the gradient times the walk's importance weight (the product of deg * A_hat over its steps,
over the number of walks), an unbiased estimate of A_hat^k's row. So a step's gradient is, in
expectation, exact LightGCN's at the cached forward values, and it touches O(batch * walks * L) rows
(sparse, with ``teachers.sparse_updates``): a step costs O(batch * walks * L * d) and an epoch
O(nnz * walks * L * d) plus one propagation per k steps. (gnn_walks = 0 trains the batch's own rows
only, which loses much of what the graph adds: a measurable part of LightGCN's recall on the tiny
synthetic run.) We took the cache over propagating only the batch's L-hop subgraph, which is exact but,
at L = 3 on a power-law graph, reaches most of the graph from any batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numba as nb
import numpy as np
import torch
from torch.nn import functional

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.rowwise import lookup
from hetcomp_dist.models.sampling import PairIndex, pair_batches, sample_negatives


class _SymmetricSpMM(torch.autograd.Function):
    """A @ X for a symmetric sparse A: the backward is A^T @ G = A @ G (no transpose, no COO)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad


def normalised_adjacency(train: CSR, n_users: int, n_items: int) -> torch.Tensor:
    """((U+I), (U+I)) sparse CSR D^-1/2 A D^-1/2 of the bipartite train graph (items offset by U)."""
    u = train.user_ids()
    i = train.items.astype(np.int64) + n_users
    deg = np.bincount(np.concatenate([u, i]), minlength=n_users + n_items).astype(np.float32)
    inv = 1.0 / np.sqrt(np.maximum(deg, 1.0))
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    vals = inv[rows] * inv[cols]
    n = n_users + n_items
    idx = torch.from_numpy(np.stack([rows, cols]))
    coo = torch.sparse_coo_tensor(idx, torch.from_numpy(vals), (n, n), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is all we use
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


class _WalkGradient(torch.autograd.Function):
    """(n, d) zeros whose gradient w.r.t. E0 is Σ_e w_e · (upstream gradient of row owner_e) at row reached_e,
    over the walk entries e: a sparse tensor holding each reached row once.

    The forward value is zero by construction (`_walk_gradient`'s estimate only carries a gradient), so
    nothing is gathered going forward. Why not `lookup(..., sparse=True)` of every entry: a batch of 16k
    pairs sends 4 walks of 3 steps from each of its 49k nodes, 590k entries (a 151 MB sparse gradient at
    d = 64) over far fewer distinct rows (every item row sits in the 30k-row item block at 300k users); the
    optimiser's coalesce then sorted and summed them every step.
    """

    @staticmethod
    def forward(ctx, emb, reached, weights, owner, n):
        ctx.save_for_backward(reached, weights, owner)
        ctx.shape = emb.shape
        return torch.zeros(n, emb.shape[1], dtype=emb.dtype, device=emb.device)

    @staticmethod
    def backward(ctx, grad):
        reached, weights, owner = ctx.saved_tensors
        rows, inverse = torch.unique(reached, return_inverse=True)  # sorted: the sparse gradient is coalesced
        if grad.device.type == "cpu":
            g = grad.contiguous().numpy()
            summed = np.zeros((len(rows), g.shape[1]), dtype=g.dtype)
            _sum_walk_terms(inverse.numpy(), owner.numpy(), weights.numpy().astype(g.dtype), g, summed)
            summed = torch.from_numpy(summed)
        else:
            terms = grad.index_select(0, owner) * weights[:, None]
            summed = torch.zeros(len(rows), grad.shape[1], dtype=grad.dtype, device=grad.device)
            summed.index_add_(0, inverse, terms)
        out = torch.sparse_coo_tensor(
            rows[None], summed, ctx.shape, is_coalesced=True, check_invariants=False
        )
        return out, None, None, None, None


@nb.njit(cache=True, nogil=True)
def _sum_walk_terms(inverse, owner, weights, grad, out):
    """out[inverse[e]] += weights[e] * grad[owner[e]] over the entries e, in order (one pass, no (entries,
    d) block of terms)."""
    d = grad.shape[1]
    for e in range(inverse.shape[0]):
        r, b, w = inverse[e], owner[e], weights[e]
        for k in range(d):
            out[r, k] += w * grad[b, k]


class LightGCN(Recommender):
    """Light graph convolution over the train graph.

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (dim, gnn_layers, gnn_refresh_every, gnn_walks, l2, sparse_updates).
        train: the full train lists (the graph); required.
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        if train is None:
            raise ValueError("LightGCN needs the train lists (its graph)")
        self.n_users, self.n_items, self.n_layers, self.l2 = n_users, n_items, cfg.gnn_layers, cfg.l2
        self.refresh_every, self.walks, self.sparse = cfg.gnn_refresh_every, cfg.gnn_walks, cfg.sparse_updates
        self.emb = torch.nn.Parameter(torch.randn(n_users + n_items, cfg.dim) * 0.1)
        self.register_buffer("adj", normalised_adjacency(train, n_users, n_items), persistent=False)
        self._keys = PairIndex(train)
        self._cache: torch.Tensor | None = None
        self._hood: torch.Tensor | None = None  # cached neighbourhood part H (gnn_refresh_every > 0)
        self._hood_age = 0  # steps since H was computed

    def propagate(self) -> torch.Tensor:
        """((U+I), d) mean of the L+1 layer embeddings."""
        e, acc = self.emb, self.emb
        for _ in range(self.n_layers):
            e = _SymmetricSpMM.apply(self.adj, e)
            acc = acc + e
        return acc / (self.n_layers + 1)

    @torch.no_grad()
    def neighbourhood(self) -> torch.Tensor:
        """((U+I), d) H = A_hat E0 + ... + A_hat^L E0 of the current layer-0 table (no gradient)."""
        e, acc = self.emb.detach(), None
        for _ in range(self.n_layers):
            e = self.adj @ e
            acc = e if acc is None else acc + e
        return acc

    def _final(self) -> torch.Tensor:
        # In eval mode the propagated table is fixed: compute it once per parameter state.
        if self.training:
            self._cache = None
            return self.propagate()
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.propagate()
        return self._cache

    def train(self, mode: bool = True) -> LightGCN:
        self._cache = self._hood = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._cache = self._hood = None
        return super().load_state_dict(*args, **kwargs)

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        self._hood = None  # every epoch starts from a fresh propagation (a resumed epoch too)
        for u, i in pair_batches(train, rng, batch_size):
            j = sample_negatives(self._keys, u, self.n_items, rng, 1)[:, 0]
            yield {
                "user": torch.from_numpy(u),
                "pos": torch.from_numpy(i.astype(np.int64)),
                "neg": torch.from_numpy(j),
            }

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """BPR on the propagated embeddings plus L2 on the layer-0 rows of the batch."""
        u, i, j = batch["user"], batch["pos"] + self.n_users, batch["neg"] + self.n_users
        if self.refresh_every == 0:
            e = self.propagate()
            diff = (e[u] * e[i]).sum(1) - (e[u] * e[j]).sum(1)
            reg = (self.emb[u].pow(2).sum() + self.emb[i].pow(2).sum() + self.emb[j].pow(2).sum()) / len(u)
            return -functional.logsigmoid(diff).mean() + self.l2 * reg
        if self._hood is None or self._hood_age >= self.refresh_every:
            self._hood, self._hood_age = self.neighbourhood(), 0
        self._hood_age += 1
        e0, e = self._cached_rows(torch.cat([u, i, j]))
        (e0_u, e0_i, e0_j), (e_u, e_i, e_j) = e0.split(len(u)), e.split(len(u))
        diff = (e_u * e_i).sum(1) - (e_u * e_j).sum(1)
        reg = (e0_u.pow(2).sum() + e0_i.pow(2).sum() + e0_j.pow(2).sum()) / len(u)
        return -functional.logsigmoid(diff).mean() + self.l2 * reg

    def _cached_rows(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer-0 rows, final rows (E0 + H) / (L+1)) of `nodes`, each (B, d), with the gradient through
        E0's rows and, by random walks, through the neighbourhood's."""
        e0 = lookup(self.emb, nodes, self.sparse)
        own = e0 + self._walk_gradient(nodes) if self.walks else e0
        return e0, (own + self._hood[nodes]) / (self.n_layers + 1)

    def _walk_gradient(self, nodes: torch.Tensor) -> torch.Tensor:
        """(B, d) zeros whose gradient w.r.t. E0 is an unbiased estimate of (A_hat + ... + A_hat^L)'s rows
        of `nodes`: `walks` random walks of L steps from each node (uniform neighbours, weighted by
        deg * A_hat per step: sum over paths of P(path) x weight = A_hat^k)."""
        crow, col, val = self.adj.crow_indices(), self.adj.col_indices(), self.adj.values()
        at = nodes.repeat_interleave(self.walks)
        weight = torch.full((len(at),), 1.0 / self.walks, device=self.emb.device)
        reached, weights = [], []
        for _ in range(self.n_layers):
            deg = crow[at + 1] - crow[at]
            step = crow[at] + (torch.rand(len(at), device=self.emb.device) * deg).long()
            # a node without edges ends the walk (weight 0); the index stays inside the adjacency
            step = torch.minimum(step, (crow[at + 1] - 1).clamp(min=0))
            weight = weight * val[step] * deg
            at = col[step]
            reached.append(at)
            weights.append(weight)
        reached, weights = torch.cat(reached), torch.cat(weights)
        owner = (
            torch.arange(len(nodes), device=nodes.device).repeat_interleave(self.walks).repeat(self.n_layers)
        )
        if self.sparse:
            return _WalkGradient.apply(self.emb, reached, weights, owner, len(nodes))
        rows = lookup(self.emb, reached, False) * weights[:, None]
        hop = torch.zeros(len(nodes), rows.shape[1], device=rows.device).index_add(0, owner, rows)
        return hop - hop.detach()

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        e = self._final()
        return e[users] @ e[self.n_users :].T

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str]:
        e = self._final().detach().cpu().numpy()
        return e[: self.n_users], e[self.n_users :], "ip"
