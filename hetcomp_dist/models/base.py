"""The contract every recommender implements (teachers and students alike).

A model is a plain ``torch.nn.Module`` -- it knows nothing of Ray or DDP. Training code calls
``fit_epoch`` once per epoch: by default it draws the epoch's model-specific batches from the train
lists (``batches``), takes an optimiser step on each one's ``loss``. A model with its own solver (ALS,
item-kNN) overrides ``fit_epoch`` and returns no ``optimizer_parameters``. Every model ranks with
``scores`` (any model) or ``embeddings`` (dot-product / distance models, for FAISS); a model without
embeddings may offer ``candidate_embeddings`` and ``pair_scores`` for an approximate index's
candidate-then-rescore path.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from hetcomp_dist.data.dataset import CSR


class Recommender(torch.nn.Module, abc.ABC):
    """Base class: subclasses set ``n_users``/``n_items`` and implement `scores`, and either `batches` and
    `loss` (trained by gradient, the default `fit_epoch`) or their own `fit_epoch`."""

    n_users: int
    n_items: int
    # True where `candidate_embeddings` scores are exactly `scores` (a last layer that is a dot product)
    exact_candidates: bool = False

    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of training batches for the model's own base loss (BPR triples, user rows, ...)."""
        raise NotImplementedError(f"{type(self).__name__} has no batches: it fits itself in fit_epoch")

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar base loss of one batch from `batches`."""
        raise NotImplementedError(f"{type(self).__name__} has no loss: it fits itself in fit_epoch")

    @abc.abstractmethod
    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) scores of every item for a batch of user ids (higher = better).

        `train` is given for models that score from the user's history (autoencoders).
        """

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(user (n_users, d), item (n_items, d), metric "ip"|"l2") when scores are a dot product or a
        negative squared distance, so FAISS can retrieve; None otherwise."""
        return None

    def candidate_embeddings(self, train: CSR) -> tuple[np.ndarray, np.ndarray, str] | None:
        """For a model without `embeddings`: (user (n_users, d), item (n_items, d), metric) vectors whose
        scores order items like `scores`, exactly or nearly, so that an approximate index can draw each
        user's candidates from them and `pair_scores` rank those exactly (``teachers.export_index``);
        None: the model has none and is ranked by full `scores`. Where their scores are the model's own
        (`exact_candidates`), the index ranks by them directly, with no candidates to rescore."""
        return None

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(P,) `scores` of the pairs (users[p], items[p]); users may repeat. By default gathered from the
        full `scores` of the distinct users; a model overrides it where a pair costs less than a row."""
        distinct, row = torch.unique(users, return_inverse=True)
        return self.scores(distinct, train)[row, items]

    def candidate_scores(
        self, users: torch.Tensor, cand: torch.Tensor, train: CSR | None = None
    ) -> torch.Tensor:
        """(B, C) `scores` of each user's candidates (users (B,), one per row; cand (B, C) item ids): the
        rescoring half of the candidate path. By default `pair_scores` of the flattened pairs; a model
        overrides it where a user's share of a pair can be computed once per row."""
        B, C = cand.shape
        return self.pair_scores(users.repeat_interleave(C), cand.reshape(-1), train).view(B, C)

    def optimizer_parameters(self) -> list[torch.nn.Parameter]:
        """What the training loop's optimiser updates; [] for a model that fits itself in `fit_epoch`."""
        return list(self.parameters())

    def fit_epoch(
        self,
        train: CSR,
        rng: np.random.Generator,
        batch_size: int,
        optimizer: torch.optim.Optimizer | None,
    ) -> float:
        """One training epoch; returns its mean loss (0.0 for a model without one).

        The default: one `optimizer` step on the `loss` of every batch of `batches`, then `after_step`.
        `optimizer` is None when `optimizer_parameters` is empty.
        """
        device = next(self.parameters()).device
        total, steps = 0.0, 0
        for batch in self.batches(train, rng, batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(batch if device.type == "cpu" else {k: v.to(device) for k, v in batch.items()})
            loss.backward()
            optimizer.step()
            self.after_step()
            total += float(loss.detach())
            steps += 1
        return total / max(steps, 1)

    def after_step(self) -> None:
        """Hook run after each optimiser step (e.g. CML's unit-ball clipping)."""

    def extra_state(self) -> dict[str, Any]:
        """Constructor arguments needed to rebuild the model for `load_state_dict`."""
        return {}
