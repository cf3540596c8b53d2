"""The student's DDP gradient sum (`student.distributed`) against a single process and against gloo's
all-reduce, in real gloo process groups."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hetcomp_dist.student import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Tables(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.items = torch.nn.Parameter(torch.randn(1000, 6, generator=g))
        self.users = torch.nn.Parameter(torch.randn(40, 6, generator=g))


class _Toy(torch.nn.Module):
    """An item table every rank shares (all-reduced) and a user table each rank keeps (ignored), one
    module down like `TrainTask`'s."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Tables()

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.model.users[users] @ self.model.items.T, 1).sum()


def _rank_users(rank: int) -> torch.Tensor:
    return torch.arange(rank * 10, rank * 10 + 10)


def _grads(rank: int, world: int, port: int, out: str) -> None:
    """Each rank's item gradient through `distributed.wrap`, and through plain gloo all-reduce (the
    reference the pair exchange must equal), in one process group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        got = {"hook": distributed.sum_hook().__name__}
        for kind in ("wrap", "all_reduce"):
            model = _Toy()
            if kind == "all_reduce":
                ddp = torch.nn.parallel.DistributedDataParallel
                ddp._set_params_and_buffers_to_ignore_for_model(model, ["model.users"])
                net, stats = ddp(model), distributed.CommStats()
                net.register_comm_hook(stats, distributed._sum_hook)
            else:
                net, stats = distributed.wrap(model, ["model.users"], torch.device("cpu"))
            net(_rank_users(rank)).backward()
            got[kind], got[f"{kind}_bytes"] = model.model.items.grad, stats.bytes
        torch.save(got, f"{out}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_sums_item_gradients_like_one_process(tmp_path, world):
    """Every rank ends with the sum of the ranks' item gradients: equal to one process's gradient over
    all ranks' users, and for two gloo ranks (the pairwise exchange) bit for bit gloo's all-reduce."""
    out = str(tmp_path / "grads")
    mp.spawn(_grads, args=(world, _free_port(), out), nprocs=world, join=True)
    got = [torch.load(f"{out}-{r}.pt", weights_only=True) for r in range(world)]
    model = _Toy()
    model(torch.cat([_rank_users(r) for r in range(world)])).backward()
    for r in got:
        torch.testing.assert_close(r["wrap"], model.model.items.grad, rtol=1e-5, atol=1e-5)
        assert torch.equal(r["wrap"], got[0]["wrap"])  # every rank holds the same sum
        assert torch.equal(r["wrap"], r["all_reduce"])  # the pair exchange is the all-reduce's sum
        assert r["wrap_bytes"] == 1000 * 6 * 4  # the item table only: the user table stays local
    assert {r["hook"] for r in got} == {"_pair_sum_hook" if world == 2 else "_sum_hook"}
