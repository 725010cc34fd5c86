"""torchrun environment, the one rank gate, and exact gathers for evaluation."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Env:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def setup(device: str = "auto") -> Env:
    """Read torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Env(rank, world, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: Env) -> None:
    if env.distributed:
        dist.barrier()


def gather_rows(env: Env, t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (ranks may hold different counts), in rank order, on all ranks."""
    if not env.distributed:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    counts = [torch.zeros_like(n) for _ in range(env.world_size)]
    dist.all_gather(counts, n)
    size = int(max(c.item() for c in counts))
    padded = torch.zeros((size, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


def sync_buffers(env: Env, module: torch.nn.Module) -> None:
    """Rank 0's BatchNorm statistics on every rank, so evaluation matches the saved checkpoint."""
    if env.distributed:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def all_min(env: Env, value: int) -> int:
    if not env.distributed:
        return value
    t = torch.tensor([value], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def broadcast_object(env: Env, obj):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """`python -m baseline ARGS`, through torchrun on this machine when nproc > 1 (the one place
    that builds that command line: `--nproc`, sweeps)."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "baseline", *args]
    return [sys.executable, "-m", "baseline", *args]
