"""The contract every recommender implements (teachers and students alike).

A model is a plain ``torch.nn.Module`` -- it knows nothing of Ray or DDP. Training code calls
``batches`` to draw one epoch of model-specific batches from the train lists, ``loss`` on each, and
ranks with ``scores`` (any model) or ``embeddings`` (dot-product / distance models, for FAISS).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from hetcomp_dist.data.dataset import CSR


class Recommender(torch.nn.Module, abc.ABC):
    """Base class: subclasses set ``n_users``/``n_items`` and implement the four methods below."""

    n_users: int
    n_items: int

    @abc.abstractmethod
    def batches(
        self, train: CSR, rng: np.random.Generator, batch_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of training batches for the model's own base loss (BPR triples, user rows, ...)."""

    @abc.abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar base loss of one batch from `batches`."""

    @abc.abstractmethod
    def scores(self, users: torch.Tensor, train: CSR | None = None) -> torch.Tensor:
        """(B, n_items) scores of every item for a batch of user ids (higher = better).

        `train` is given for models that score from the user's history (autoencoders).
        """

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(user (n_users, d), item (n_items, d), metric "ip"|"l2") when scores are a dot product or a
        negative squared distance, so FAISS can retrieve; None otherwise."""
        return None

    def after_step(self) -> None:
        """Hook run after each optimiser step (e.g. CML's unit-ball clipping)."""

    def extra_state(self) -> dict[str, Any]:
        """Constructor arguments needed to rebuild the model for `load_state_dict`."""
        return {}
