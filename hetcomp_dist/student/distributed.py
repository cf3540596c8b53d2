"""DDP plumbing for the student: which gradients travel, how they are summed, and row gathers.

Why user tables stay out of the all-reduce: rank r only ever trains users [lo_r, hi_r), so its
user-row gradients are zero elsewhere; all-reducing them would ship O(n_users · d) bytes per step
for nothing. We tell DDP to ignore those parameters, all-reduce only the item side (plus shared
tower weights), and count the bytes that actually go through the communication hook -- per-step
traffic is then independent of the number of users. The hook *sums* gradients (DDP's default
averages): every objective returns its rank-local share of a global sum, so W ranks reproduce
one process on the whole batch. Single-process (no process group) runs skip all of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class CommStats:
    """Bytes handed to all-reduce by the DDP hook, and how many buckets."""

    bytes: int = 0
    buckets: int = 0
    steps: int = 0
    log: list = field(default_factory=list)

    def per_step(self) -> float:
        return self.bytes / max(self.steps, 1)

    def count(self, buf: torch.Tensor) -> None:
        """One bucket handed to the exchange."""
        self.bytes += buf.numel() * buf.element_size()
        self.buckets += 1


def _sum_hook(state, bucket):  # (CommStats, dist.GradBucket) -> Future; DDP rejects string annotations
    buf = bucket.buffer()
    state.count(buf)
    fut = dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def _pair_sum_hook(state, bucket):  # (CommStats, dist.GradBucket) -> Future
    """Two ranks over gloo: each sends its bucket to the other and adds what it receives.

    Why: one exchange is cheaper than gloo's all-reduce of the same bucket, which sits exposed at the end
    of every backward (timings: docs/PERFORMANCE.md). The result is the all-reduce's bit for bit: with two
    operands both ranks compute a + b, and IEEE addition commutes (tests/test_distributed.py).
    """
    buf = bucket.buffer()
    state.count(buf)
    other = torch.empty_like(buf)
    peer = 1 - dist.get_rank()
    for work in (dist.isend(buf, peer), dist.irecv(other, peer)):
        work.wait()  # both complete before buf changes: the peer has read all of it
    buf.add_(other)
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(buf)
    return fut


def sum_hook():
    """The comm hook summing gradients over ranks: one pairwise exchange for two gloo ranks, else
    all-reduce."""
    if dist.get_world_size() == 2 and dist.get_backend() == "gloo":
        return _pair_sum_hook
    return _sum_hook


def wrap(
    module: torch.nn.Module, ignore: list[str], device: torch.device
) -> tuple[torch.nn.Module, CommStats]:
    """DDP around `module` with the named parameters and buffers excluded from synchronisation
    (neither broadcast at construction nor all-reduced); gradients are summed by `sum_hook`.

    Returns:
        (the module to call, the byte counter); without a process group, (module, counter) as is.
    """
    stats = CommStats()
    if not is_dist():
        return module, stats
    DDP._set_params_and_buffers_to_ignore_for_model(module, ignore)
    ids = [device.index] if device.type == "cuda" else None
    ddp = DDP(module, device_ids=ids)
    ddp.register_comm_hook(stats, sum_hook())
    return ddp, stats


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_rows(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Every rank's own rows [lo, hi) of a (n_users, ...) tensor, assembled on all ranks.

    Each rank contributes its rows and zeros elsewhere; one sum all-reduce assembles the table
    (user ranges are disjoint and cover all users). Costs O(n_users · d) bytes, so it is used only
    at evaluations/DKC/checkpoints, never per step.
    """
    if not is_dist():
        return t.detach().clone()
    out = torch.zeros_like(t)
    out[lo:hi] = t.detach()[lo:hi]
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast(obj):
    """A picklable object from rank 0 to all ranks (small metadata only)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj) -> list:
    """Every rank's picklable `obj` in rank order (small metadata only); [obj] in a single process."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
