"""Process-group set-up for TorchRec: one process by default, ``torchrun`` for more.

Under ``torchrun`` the usual environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) is present and is
used as is. A plain ``python``/``silverrec-train`` run becomes a 1-process group on a free
loopback port, so the same DistributedModelParallel code path runs everywhere.
"""
import os
import socket
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process stands in the group.

    Args:
        rank (int): global rank.
        world_size (int): number of processes.
        device (torch.device): this process's device.
        backend (str): gloo (CPU) or nccl (CUDA).
    """

    rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistContext:
    """Initialises (or joins) the default process group; ``device`` is ``cpu`` or ``cuda``."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"trainer.device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but CUDA is not available on this machine")
    backend = "nccl" if device == "cuda" else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ:  # launched by torchrun (env:// rendezvous)
            dist.init_process_group(backend)
        else:  # a plain single-process run: a private store on a free loopback port
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    return DistContext(rank=rank, world_size=world, device=dev, backend=backend)


def local_context() -> DistContext:
    """A 1-process CPU context that needs no process group (evaluation, export, tools)."""
    return DistContext(rank=0, world_size=1, device=torch.device("cpu"), backend="none")


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenates every rank's equally-shaped ``t`` along dim 0, in rank order."""
    if ctx.world_size == 1:
        return t
    parts: List[torch.Tensor] = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
