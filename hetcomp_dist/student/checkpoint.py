"""Student checkpoints: model + optimiser state with every user row taken from its owner.

A rank holds valid rows only for its own users (the others are never trained there), so saving
first assembles each per-user table -- parameters and their Adam moments -- from the owners
(`distributed.gather_rows`). All ranks take part in the gather; rank 0 writes ``state.pt``, which
loads with ``torch.load(..., weights_only=True)`` (tensors and plain containers only).
"""

from __future__ import annotations

import io
import os

import torch

from hetcomp_dist import storage
from hetcomp_dist.objectives.base import TrainTask
from hetcomp_dist.student import distributed

FILE = "state.pt"


def capture(task: TrainTask, opt: torch.optim.Optimizer, lo: int, hi: int) -> dict:
    """Model, objective and optimiser state with gathered user rows (a collective: all ranks call it)."""
    users = set(task.user_param_names())
    names = [n for n, _ in task.named_parameters()]
    model = {}
    for name, t in task.state_dict().items():
        model[name] = distributed.gather_rows(t, lo, hi) if name in users else t.detach().clone()
    opt_sd = opt.state_dict()
    state = {}
    for idx, st in opt_sd["state"].items():
        gathered = names[idx] in users
        state[idx] = {
            k: (
                distributed.gather_rows(v, lo, hi)
                if gathered and torch.is_tensor(v) and v.dim() > 0
                else (v.detach().clone() if torch.is_tensor(v) else v)
            )
            for k, v in st.items()
        }
    return {"model": model, "optim": {"state": state, "param_groups": opt_sd["param_groups"]}}


def restore(task: TrainTask, opt: torch.optim.Optimizer, snap: dict) -> None:
    task.load_state_dict(snap["model"])
    opt.load_state_dict(snap["optim"])


def save(directory: str, payload: dict) -> str:
    path = os.path.join(directory, FILE)
    torch.save(payload, path)
    return path


def load(directory: str) -> dict:
    """The payload of a checkpoint directory, never unpickling arbitrary objects."""
    return torch.load(os.path.join(directory, FILE), map_location="cpu", weights_only=True)


def save_file(path: str, payload: dict) -> None:
    """The payload as one file at `path` (local or URI), written atomically (a crash keeps the last one).

    Ray Train's local mode (``student.num_workers = 0``: the training runs in the calling process)
    keeps no checkpoints of its own, so the trainer keeps this one for a rerun to resume from.
    """
    buf = io.BytesIO()
    torch.save(payload, buf)
    storage.write_bytes_atomic(path, buf.getvalue())


def load_file(path: str) -> dict | None:
    """The payload `save_file` wrote, or None when there is none (never unpickling arbitrary objects)."""
    if not storage.exists(path):
        return None
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
