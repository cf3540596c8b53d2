"""DNN teacher: NeuMF, s(u, i) = h . [p_u * q_i ; MLP(p'_u ; q'_i)] with BCE on sampled negatives.

The MLP tower halves its width per layer (input 2*dnn_mlp_dim). Full-catalogue scoring splits the
first MLP layer into a user part and an item part (it is linear in the concatenation), so a block
of B users costs B x n_items x (the narrow layers) and never more than a bounded chunk of memory.
"""

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

_CHUNK_ELEMS = 1 << 19  # floats per (users x items x width) block while scoring (2 MiB: stays in cache)
# users whose MLP terms each item's linear fit in `candidate_embeddings` is taken from: at 1M users x 100k
# items 1,024 scored as well as 4,096 (recall .9925 against .9921 through 400 candidates); the whole
# `candidate_embeddings` took 8.7 s there
_CANDIDATE_USERS = 1024
_RIDGE = 1e-3  # the fit's ridge, a multiple of the first-layer activations' mean variance
_USER_BLOCK = 65536  # users per block of the candidate user vectors
_FIT_BLOCK = 128  # sample users per (block, n_items) block of MLP terms in the fit


class NeuMF(Recommender):
    """Neural matrix factorisation (GMF + MLP towers fused by a linear head).

    Args:
        n_users, n_items: catalogue sizes.
        cfg: teachers section (dim = GMF width, dnn_mlp_dim, dnn_layers, dnn_negatives, l2, sparse_updates).
        train: unused.
    """

    def __init__(self, n_users: int, n_items: int, cfg: TeachersConfig, train: CSR | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.n_neg, self.l2 = n_users, n_items, cfg.dnn_negatives, cfg.l2
        self.sparse = cfg.sparse_updates
        d, m = cfg.dim, cfg.dnn_mlp_dim
        self.gmf_user = torch.nn.Parameter(torch.randn(n_users, d) * 0.01)
        self.gmf_item = torch.nn.Parameter(torch.randn(n_items, d) * 0.01)
        self.mlp_user = torch.nn.Parameter(torch.randn(n_users, m) * 0.01)
        self.mlp_item = torch.nn.Parameter(torch.randn(n_items, m) * 0.01)
        widths = [2 * m] + [max(1, 2 * m >> (k + 1)) for k in range(cfg.dnn_layers)]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = torch.nn.Linear(d + widths[-1], 1)
        self._keys: PairIndex | None = None

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Each batch: positives (B,) plus dnn_negatives sampled negatives per positive."""
        if self._keys is None or len(self._keys) != len(train.items):
            self._keys = PairIndex(train)
        for u, i in pair_batches(train, rng, batch_size):
            j = sample_negatives(self._keys, u, self.n_items, rng, self.n_neg)
            users = np.concatenate([u, np.repeat(u, self.n_neg)])
            items = np.concatenate([i.astype(np.int64), j.ravel()])
            label = np.concatenate([np.ones(len(u), np.float32), np.zeros(j.size, np.float32)])
            yield {
                "user": torch.from_numpy(users),
                "item": torch.from_numpy(items),
                "label": torch.from_numpy(label),
            }

    def _pair_logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self._rows(self.mlp_user, users), self._rows(self.mlp_item, items)], 1)
        for layer in self.layers:
            h = torch.relu(layer(h))
        gmf = self._rows(self.gmf_user, users) * self._rows(self.gmf_item, items)
        return self.head(torch.cat([gmf, h], 1))[:, 0]

    def _rows(self, table: torch.nn.Parameter, index: torch.Tensor) -> torch.Tensor:
        return lookup(table, index, self.sparse)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Binary cross-entropy on (user, item, label) pairs plus L2 on the touched embedding rows."""
        u, i = batch["user"], batch["item"]
        logit = self._pair_logits(u, i)
        reg = sum(
            t.pow(2).sum()
            for t in (
                self._rows(self.gmf_user, u),
                self._rows(self.gmf_item, i),
                self._rows(self.mlp_user, u),
                self._rows(self.mlp_item, i),
            )
        )
        return functional.binary_cross_entropy_with_logits(logit, batch["label"]) + self.l2 * reg / len(u)

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) logits, computed in item chunks that bound the (B, chunk, width) block."""
        return self._scores(users, gmf=True)

    def _scores(self, users: torch.Tensor, gmf: bool) -> torch.Tensor:
        """`scores`, or without their GMF half (the head's bias and MLP term only: `candidate_embeddings`)."""
        first = self.layers[0]
        m = self.mlp_user.shape[1]
        a = self.mlp_user[users] @ first.weight[:, :m].T + first.bias  # (B, h1)
        c = self.mlp_item @ first.weight[:, m:].T  # (n_items, h1)
        w_gmf, w_mlp = (
            self.head.weight[0, : self.gmf_user.shape[1]],
            self.head.weight[0, self.gmf_user.shape[1] :],
        )
        if gmf:
            out = (self.gmf_user[users] * w_gmf) @ self.gmf_item.T + self.head.bias  # (B, n_items), in place
        else:
            out = self.head.bias.expand(len(users), self.n_items).clone()
        chunk = max(1, _CHUNK_ELEMS // max(1, len(users) * a.shape[1]))
        for s in range(0, self.n_items, chunk):
            h = torch.relu(a[:, None, :] + c[None, s : s + chunk, :])
            for layer in self.layers[1:]:
                h = torch.relu(layer(h))
            out[:, s : s + chunk] += h @ w_mlp
        return out

    @torch.no_grad()
    def candidate_embeddings(self, train: CSR | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """([w_gmf * p_u, 1, a_u - a_mean], [q_i, m_i, beta_i], "ip"): the GMF half of the head exactly, and
        the rest of the score (head bias and MLP tower) as each item's least-squares linear fit in the user's
        first-layer activation a_u = W1_user p'_u (the MLP term is a function of a_u + c_i): over a fixed
        sample of users S, m_i is the term's mean and beta_i (h1,) its ridge-regression slope on a_u - a_mean.
        The MLP term as a per-item mean alone (beta = 0) ranked NeuMF's scores too loosely once the MLP
        trained: at 1M users a third-epoch state's exact top 100 kept .96 of its items among 400 candidates
        from those vectors, .99 from these (docs/PERFORMANCE.md). What the fit misses of a user's own MLP
        term is what the candidates can miss; `candidate_scores` ranks them exactly."""
        d, m = self.gmf_user.shape[1], self.mlp_user.shape[1]
        w_gmf, w_user = self.head.weight[0, :d], self.layers[0].weight[:, :m]
        step = max(1, self.n_users // _CANDIDATE_USERS)
        sample = torch.arange(0, self.n_users, step, device=w_gmf.device)[:_CANDIDATE_USERS]
        a = self.mlp_user[sample] @ w_user.T  # (S, h1)
        a_mean = a.mean(0)
        a_c = a - a_mean
        # the MLP terms (with the head's bias) of the sample in blocks of users: their sum over the sample and
        # their cross product with a_c (which sums to 0, so that is the centred one), never (S, n_items)
        r_sum = torch.zeros(self.n_items, device=a.device)
        cross = torch.zeros(a.shape[1], self.n_items, device=a.device)
        for s in range(0, len(sample), _FIT_BLOCK):
            blk = sample[s : s + _FIT_BLOCK]
            rest = self._scores(blk, gmf=False)
            r_sum += rest.sum(0)
            cross.addmm_(a_c[s : s + _FIT_BLOCK].T, rest)
        r_mean = r_sum / len(sample)
        # ridge: a small multiple of the activations' mean variance, so a sample smaller than h1 (or
        # collinear activations) still gives a unique, bounded slope
        gram = a_c.T @ a_c + _RIDGE * max(float(a_c.pow(2).sum()) / a_c.shape[1], 1e-12) * torch.eye(
            a_c.shape[1], device=a.device
        )
        beta = torch.linalg.solve(gram, cross)  # (h1, n_items)
        item = torch.cat([self.gmf_item, r_mean[:, None], beta.T], 1)
        # filled in blocks: no (n_users, .) temporaries
        user = np.empty((self.n_users, item.shape[1]), np.float32)
        for s in range(0, self.n_users, _USER_BLOCK):
            rows = slice(s, min(s + _USER_BLOCK, self.n_users))
            user[rows, :d] = (self.gmf_user[rows] * w_gmf).cpu().numpy()
            user[rows, d] = 1.0
            user[rows, d + 1 :] = (self.mlp_user[rows] @ w_user.T - a_mean).cpu().numpy()
        return user, item.cpu().numpy(), "ip"

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(P,) logits of the pairs, through the towers pair by pair."""
        return self._pair_logits(users, items)

    def candidate_scores(
        self, users: torch.Tensor, cand: torch.Tensor, train: CSR | None = None
    ) -> torch.Tensor:
        """(B, C) logits of each user's candidates, as `scores` computes them: the first MLP layer split
        into its user half (once per row) and its item half (once per item, or per candidate where there
        are fewer candidates than items), the GMF term as one product per row. Pair by pair
        (`pair_scores`), each candidate gathers and multiplies its user's rows again; at 300k users that
        rescoring of 400 candidates per user was most of NeuMF's export."""
        first, d = self.layers[0], self.gmf_user.shape[1]
        m, (B, C), flat = self.mlp_user.shape[1], cand.shape, cand.reshape(-1)
        # index_select, not advanced indexing: the gathers are most of the time, and it is the faster one
        a = self.mlp_user.index_select(0, users) @ first.weight[:, :m].T + first.bias  # (B, h1)
        w_item = first.weight[:, m:]
        if cand.numel() > self.n_items:
            c = (self.mlp_item @ w_item.T).index_select(0, flat)
        else:
            c = self.mlp_item.index_select(0, flat) @ w_item.T
        h = c.view(B, C, -1).add_(a[:, None, :]).relu_()  # (B, C, h1)
        for layer in self.layers[1:]:
            h = layer(h).relu_()
        w_gmf, w_mlp = self.head.weight[0, :d], self.head.weight[0, d:]
        user_gmf = (self.gmf_user.index_select(0, users) * w_gmf)[:, :, None]  # (B, d, 1)
        gmf = torch.bmm(self.gmf_item.index_select(0, flat).view(B, C, d), user_gmf)[..., 0]  # (B, C)
        return (h @ w_mlp).add_(gmf).add_(self.head.bias)
