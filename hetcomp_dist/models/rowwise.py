"""Sparse, row-wise training of embedding tables: a step costs O(rows in the batch), not O(table).

A model that trains with sparse updates looks its table rows up with `lookup(table, index, sparse=True)`
(`torch.nn.functional.embedding` with ``sparse=True``): the table's gradient is then a sparse tensor
holding only the looked-up rows, and `RowwiseAdam` gives those rows Adam's update -- with their own
first and second moments -- and leaves every other row and its moments as they are. That is the
"lazy" Adam of TensorFlow's LazyAdam and of TorchRec's fused embedding optimisers (FBGEMM's Adam keeps
full per-element moments too; only its row-wise Adagrad shares one second moment per row). Parameters
with dense gradients (item tables the full-catalogue terms touch, MLP layers) take torch's own Adam
step, bit for bit the one `torch.optim.Adam` takes, so a model without sparse tables trains exactly as
under `torch.optim.Adam`.

How lazy differs from dense Adam, and what we chose:

- A row absent from a step keeps its weights and moments: dense Adam would still move it by its
  decaying momentum. The bias correction uses the parameter's global step count (as LazyAdam).
- L2 weight decay (`weight_decay`, the student's 1e-5) is added to the gradient of the rows in the
  step only (as dense Adam adds it to every row's gradient). Under dense Adam a row no batch touches
  is pulled towards 0 at about `lr` per step, since Adam normalises that decay gradient; the lazy
  version leaves it alone until its user appears again. The teachers' l2 is part of their losses
  (over the batch's rows), so it is sparse already.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from torch.nn import functional


def lookup(table: torch.Tensor, index: torch.Tensor, sparse: bool) -> torch.Tensor:
    """(len(index), d) rows of a (n, d) table; with `sparse`, its gradient is a sparse tensor of those rows.

    Dense mode is plain indexing (the gradient a dense (n, d) tensor), so a model with sparse updates
    off computes exactly what it always did.
    """
    return functional.embedding(index, table, sparse=True) if sparse else table[index]


class _SparseGather(torch.autograd.Function):
    """vec[index] of a 1-D parameter whose gradient is a sparse (n,) tensor of the gathered entries."""

    @staticmethod
    def forward(ctx, vec: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.n = vec.shape[0]
        return vec[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(index.unsqueeze(0), grad, (ctx.n,), check_invariants=False), None


def lookup_entries(vec: torch.Tensor, index: torch.Tensor, sparse: bool) -> torch.Tensor:
    """(len(index),) entries of a (n,) vector (a layer's bias); with `sparse`, its gradient is a sparse
    tensor of those entries (`RowwiseAdam` treats each entry as a row). Dense mode is plain indexing."""
    return _SparseGather.apply(vec, index) if sparse else vec[index]


def touched_rows(table: torch.Tensor) -> torch.Tensor | None:
    """Distinct row indices in `table`'s sparse gradient (the rows the last step changed), or None when
    its gradient is dense or absent (the step may have changed any row)."""
    grad = table.grad
    if grad is None or not grad.is_sparse:
        return None
    return grad.coalesce().indices()[0]


@nb.njit(cache=True, nogil=True)
def _coalesce_rows(idx, vals, n_rows):
    """(distinct rows ascending, their summed value rows) of row entries idx (nnz,) with vals (nnz, m):
    duplicates summed in entry order. Rows are ordered by a scan of a presence map when the distinct rows
    are at least 1/32 of the table (cheaper than sorting them), else by sorting them."""
    slot = np.full(n_rows, -1, np.int64)
    rows = np.empty(idx.shape[0], np.int64)
    k = 0
    for e in range(idx.shape[0]):
        r = idx[e]
        if slot[r] == -1:
            slot[r] = -2
            rows[k] = r
            k += 1
    rows = rows[:k]
    if 32 * k >= n_rows:
        j = 0
        for r in range(n_rows):
            if slot[r] == -2:
                rows[j] = r
                j += 1
    else:
        rows.sort()
    for j in range(k):
        slot[rows[j]] = j
    out = np.zeros((k, vals.shape[1]), vals.dtype)
    for e in range(idx.shape[0]):
        o = out[slot[idx[e]]]
        v = vals[e]
        for c in range(vals.shape[1]):
            o[c] += v[c]
    return rows, out


def coalesce(grad: torch.Tensor) -> torch.Tensor:
    """`grad.coalesce()` of a sparse gradient over a table's rows (sparse in dim 0 only), on the CPU by
    `_coalesce_rows`: torch's sorts every entry (an argsort of nnz keys: 19 ms per table and step for
    NeuMF's four tables at 300k users), where a presence map over the rows costs O(nnz + rows)."""
    if grad.is_coalesced() or grad.device.type != "cpu" or grad.sparse_dim() != 1:
        return grad.coalesce()
    vals = grad._values()
    flat = vals.reshape(vals.shape[0], -1).contiguous()
    rows, summed = _coalesce_rows(grad._indices()[0].contiguous().numpy(), flat.numpy(), grad.shape[0])
    out = torch.from_numpy(summed).reshape((len(rows), *vals.shape[1:]))
    return torch.sparse_coo_tensor(
        torch.from_numpy(rows)[None], out, grad.shape, is_coalesced=True, check_invariants=False
    )


class RowwiseAdam(torch.optim.Adam):
    """`torch.optim.Adam` whose parameters with sparse gradients take lazy, row-wise updates.

    Takes `torch.optim.Adam`'s arguments (amsgrad and maximize are not supported for sparse gradients).
    Its state dict has Adam's layout (per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``), so
    checkpoints and the student's per-user gathers treat it as Adam's.
    """

    @torch.no_grad()
    def step(self, closure=None):
        held = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    held[p] = p.grad
                    p.grad = None  # hidden from Adam's own step, which rejects sparse gradients
        try:
            loss = super().step(closure)
        finally:
            for p, grad in held.items():
                p.grad = coalesce(grad)  # sums the rows looked up more than once (`touched_rows` reuses it)
        for group in self.param_groups:
            for p in group["params"]:
                if p in held:
                    self._lazy_step(p, p.grad, group)
        return loss

    def _lazy_step(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        """Adam's update (torch's single-tensor formulas) on the rows of the coalesced sparse `grad` only."""
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("RowwiseAdam: amsgrad and maximize are not supported for sparse gradients")
        state = self.state[p]
        if not state:
            # where Adam keeps it: on the parameter's device when fused, else on the CPU
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if group["fused"] else "cpu")
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        rows, g = grad.indices()[0], grad.values()
        if g.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        state["step"] += 1
        step = float(state["step"])
        # index_select / index_copy_ rather than [rows]: the same copies, about 4x faster on CPU once the
        # table outgrows the caches (a 300k x 64 table's step: 30.9 -> 10.0 ms; docs/PERFORMANCE.md)
        w = p.index_select(0, rows)
        if wd:
            g = g.add(w, alpha=wd)
        m = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)
        v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
        w.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        p.index_copy_(0, rows, w)
