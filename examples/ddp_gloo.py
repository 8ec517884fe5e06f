"""DistributedDataParallel with a gradient-regularized objective: 2 CPU processes (gloo backend).

Each process takes half of the batch; DDP averages the parameter gradients. The objective is a batch
mean (task loss and each term), so the averaged gradient equals a single process's gradient on the
joined batch, exactly, when each process draws its own projections (generator seeded by rank) and the
single process draws the same ones (one generator per equal chunk of the batch, as the terms allow).
``main()`` checks that. The model has no BatchNorm: plain BatchNorm normalizes over each process's own
half (use ``nn.SyncBatchNorm`` for batch statistics over the whole batch).
Run: ``python examples/ddp_gloo.py``.
"""
from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gradreg

WORLD = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 4)).double()


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 10, generator=g, dtype=torch.float64), torch.randint(0, 4, (16,), generator=g)


def make_objective() -> gradreg.Objective:
    return gradreg.Objective("cross_entropy", [(0.1, gradreg.SpectReg()), (1.0, gradreg.DataGrad())])


def projections(rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(100 + rank)


def _worker(rank: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = DistributedDataParallel(make_model())
        x, y = make_batch()
        xs, ys = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        out = make_objective()(model, xs, ys, generator=projections(rank))
        out.loss.backward()  # DDP all-reduces (averages) the parameter gradients here
        if rank == 0:
            torch.save([p.grad for p in model.module.parameters()], out_path)
        dist.barrier()  # neither process tears the group down while the other still talks to it
    finally:
        dist.destroy_process_group()
    # Gloo's threads can abort the interpreter's own teardown ("terminate called without an active
    # exception", 1 run in about 15 here): the work is done and saved, so the worker leaves without it.
    os._exit(0)


def ddp_gradients() -> list[torch.Tensor]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "grads.pt")
        mp.spawn(_worker, args=(port, path), nprocs=WORLD, join=True)
        return torch.load(path, weights_only=True)


def single_process_gradients() -> list[torch.Tensor]:
    model = make_model()
    x, y = make_batch()
    # One generator per equal chunk: chunk r draws what process r draws.
    make_objective()(model, x, y, generator=[projections(r) for r in range(WORLD)]).loss.backward()
    return [p.grad for p in model.parameters()]


def main() -> float:
    """The largest absolute difference between DDP's and the single process's gradients."""
    return max((a - b).abs().max().item() for a, b in zip(ddp_gradients(), single_process_gradients()))


if __name__ == "__main__":
    diff = main()
    print(f"max |DDP gradient - single-process gradient| = {diff:.3g}")
