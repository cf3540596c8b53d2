"""Dimension-6 students: MF, ML (metric learning) and a two-tower DNN (METHOD.md §2).

Every student scores with one bilinear form, ``s(u, i) = a_u . c_i``, over a user-side matrix
``a = user_side(users)`` (B, d') and an item-side matrix ``c = item_side()`` (n_items, d'):

- MF:  a_u = p_u, c_i = q_i (d' = d);
- ML:  s = -||p_u - q_i||^2 = [p_u, ||p_u||^2, 1] . [2 q_i, -1, -||q_i||^2] (d' = d + 2);
- DNN: a_u = f(e_u), c_i = g(e'_i) with MLP towers f, g over id embeddings (d' = d). We make the
  paper's DNN student a two-tower model, so its retrieval is FAISS-compatible like the others.

The distillation losses only need this factorised form (`hetcomp_dist.objectives.losses` never builds
more than a (users-in-batch x item-chunk) block). Each student also has its own base loss for
"w/o KD": BPR for MF and DNN, the CML hinge for ML. Models know nothing of Ray or DDP;
``user_tables`` names the per-user parameter tables (one row per user) so the trainer can keep
them out of the gradient all-reduce. With ``student.sparse_updates`` the user table's gradient is
sparse (the batch's rows; models/rowwise.py), so a step costs O(batch) user rows; the item tables
stay dense: the full-catalogue tail of L_O/L_F touches every item row at every step anyway.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional

from hetcomp_dist.config import StudentConfig
from hetcomp_dist.data.dataset import CSR
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.rowwise import touched_rows
from hetcomp_dist.models.sampling import PairIndex, pair_batches, sample_negatives


class Student(Recommender):
    """Shared parts of the students: the bilinear score, triples for the base loss, embeddings.

    Subclasses define `user_side`, `item_side` and `base_loss`.
    """

    #: names of parameters with one row per user (excluded from DDP's all-reduce)
    user_tables: tuple[str, ...] = ("user_emb.weight",)
    metric: str = "ip"

    def __init__(self, n_users: int, n_items: int, cfg: StudentConfig) -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, cfg.dim
        self._cfg = cfg
        self._keys: PairIndex | None = None

    # ---- the factorised score
    @abc.abstractmethod
    def user_side(self, users: torch.Tensor) -> torch.Tensor:
        """(B, d') user-side vectors of absolute user ids (B,)."""

    @abc.abstractmethod
    def item_side(self) -> torch.Tensor:
        """(n_items, d') item-side vectors."""

    @abc.abstractmethod
    def base_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """(n,) per-triple base loss for triples (user, observed item, sampled unobserved item)."""

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) scores s(u, i) of every item."""
        return self.user_side(users) @ self.item_side().T

    # ---- the Recommender contract
    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of BPR/hinge triples over every train interaction (one sampled negative each)."""
        if self._keys is None or len(self._keys) != len(train.items):
            self._keys = PairIndex(train)
        for u, i in pair_batches(train, rng, batch_size):
            j = sample_negatives(self._keys, u, self.n_items, rng, 1)[:, 0]
            yield {
                "user": torch.from_numpy(u.astype(np.int64)),
                "pos": torch.from_numpy(i.astype(np.int64)),
                "neg": torch.from_numpy(j.astype(np.int64)),
            }

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean base loss of a batch of triples from `batches`."""
        return self.base_loss(batch["user"], batch["pos"], batch["neg"]).mean()

    @torch.no_grad()
    def embeddings(self, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray, str]:
        """(user (n_users, d), item (n_items, d), metric) for FAISS; computed in user batches."""
        users = (
            np.concatenate(
                [
                    self.user_vectors(
                        torch.arange(s, min(s + batch_size, self.n_users), device=self._device())
                    )
                    for s in range(0, self.n_users, batch_size)
                ]
            )
            if self.n_users
            else np.zeros((0, self.dim), np.float32)
        )
        return users, self.item_vectors(), self.metric

    @torch.no_grad()
    def user_vectors(self, users: torch.Tensor) -> np.ndarray:
        """(B, d) float32 retrieval vectors of users (the FAISS query side)."""
        return self.user_side(users).float().cpu().numpy()

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """(n_items, d) float32 retrieval vectors of items (the FAISS index side)."""
        # a copy: on CPU .numpy() is a live view of the weights, and the best epoch's vectors must survive
        return self.item_side().float().cpu().numpy().copy()

    def extra_state(self) -> dict:
        return {"n_users": self.n_users, "n_items": self.n_items}

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def _normal_embedding(n: int, d: int, std: float = 0.01, sparse: bool = False) -> torch.nn.Embedding:
    emb = torch.nn.Embedding(n, d, sparse=sparse)
    torch.nn.init.normal_(emb.weight, 0.0, std)
    return emb


class MFStudent(Student):
    """s(u, i) = p_u . q_i, base loss BPR; init N(0, 0.01^2) as the paper's code."""

    def __init__(self, n_users: int, n_items: int, cfg: StudentConfig) -> None:
        super().__init__(n_users, n_items, cfg)
        self.user_emb = _normal_embedding(n_users, cfg.dim, sparse=cfg.sparse_updates)
        self.item_emb = _normal_embedding(n_items, cfg.dim)

    def user_side(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users)

    def item_side(self) -> torch.Tensor:
        return self.item_emb.weight

    def base_loss(self, users, pos, neg):
        p = self.user_emb(users)
        return -functional.logsigmoid((p * (self.item_emb(pos) - self.item_emb(neg))).sum(1))


class MLStudent(Student):
    """s(u, i) = -||p_u - q_i||^2 (used as the logit), base loss the CML hinge with margin m.

    Rows are renormalised into the ball of radius ``cfg.ml_max_norm`` after every step (CML's
    unit-ball constraint; 0 disables it). Retrieval is FAISS L2 on (p, q).
    """

    metric = "l2"

    def __init__(self, n_users: int, n_items: int, cfg: StudentConfig) -> None:
        super().__init__(n_users, n_items, cfg)
        std = 1.0 / cfg.dim**0.5
        self.user_emb = _normal_embedding(n_users, cfg.dim, std, sparse=cfg.sparse_updates)
        self.item_emb = _normal_embedding(n_items, cfg.dim, std)
        self.margin, self.max_norm = cfg.ml_margin, cfg.ml_max_norm
        self.after_step()

    def user_side(self, users: torch.Tensor) -> torch.Tensor:
        p = self.user_emb(users)
        return torch.cat([p, p.pow(2).sum(1, keepdim=True), torch.ones_like(p[:, :1])], 1)

    def item_side(self) -> torch.Tensor:
        q = self.item_emb.weight
        return torch.cat([2 * q, -torch.ones_like(q[:, :1]), -q.pow(2).sum(1, keepdim=True)], 1)

    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) -||p_u - q_i||^2 (computed directly, not through the augmented form)."""
        return -torch.cdist(self.user_emb(users), self.item_emb.weight).pow(2)

    def base_loss(self, users, pos, neg):
        p = self.user_emb(users)
        d_pos = (p - self.item_emb(pos)).pow(2).sum(1)
        d_neg = (p - self.item_emb(neg)).pow(2).sum(1)
        return torch.relu(self.margin + d_pos - d_neg)

    @torch.no_grad()
    def user_vectors(self, users: torch.Tensor) -> np.ndarray:
        return self.user_emb(users).float().cpu().numpy()

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        return self.item_emb.weight.float().cpu().numpy().copy()  # not a live view (see above)

    @torch.no_grad()
    def after_step(self) -> None:
        """Renormalises the rows the step changed (every row of a table with a dense gradient)."""
        if self.max_norm > 0:
            for w in (self.user_emb.weight, self.item_emb.weight):
                rows = touched_rows(w)
                if rows is None:
                    w.data = torch.renorm(w.data, 2, 0, self.max_norm)
                else:
                    w[rows] = torch.renorm(w[rows], 2, 0, self.max_norm)


def _tower(dims: list[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for k in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[k], dims[k + 1]))
        if k < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class DNNStudent(Student):
    """Two towers: a_u = f(e_u), c_i = g(e'_i), s = a_u . c_i; base loss BPR.

    Id embeddings of width ``cfg.dim``, towers ``dim -> dnn_hidden... -> dim`` with ReLU between
    layers (the last layer linear). The user tower's weights are shared by all users, so they are
    all-reduced like the item side; only the id table `user_emb` is per user. With
    ``cfg.dnn_residual`` each tower adds its input back (a_u = e_u + f(e_u)): an MF student plus a
    learned correction, instead of a ReLU bottleneck every score must pass through.
    """

    def __init__(self, n_users: int, n_items: int, cfg: StudentConfig) -> None:
        super().__init__(n_users, n_items, cfg)
        self.user_emb = _normal_embedding(n_users, cfg.dim, 0.1, sparse=cfg.sparse_updates)
        self.item_emb = _normal_embedding(n_items, cfg.dim, 0.1)
        dims = [cfg.dim, *cfg.dnn_hidden, cfg.dim]
        self.user_tower, self.item_tower = _tower(dims), _tower(dims)
        self.residual = cfg.dnn_residual

    def _through(self, tower: torch.nn.Module, e: torch.Tensor) -> torch.Tensor:
        return e + tower(e) if self.residual else tower(e)

    def user_side(self, users: torch.Tensor) -> torch.Tensor:
        return self._through(self.user_tower, self.user_emb(users))

    def item_side(self) -> torch.Tensor:
        return self._through(self.item_tower, self.item_emb.weight)

    def base_loss(self, users, pos, neg):
        a = self.user_side(users)
        ci, cj = (
            self._through(self.item_tower, self.item_emb(pos)),
            self._through(self.item_tower, self.item_emb(neg)),
        )
        return -functional.logsigmoid((a * (ci - cj)).sum(1))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
