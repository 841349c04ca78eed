"""Data-parallel training with PyTorch's own engine: `torchrun --nproc_per_node N -m cct train ...` starts N
processes; each trains on its shard of every global batch, DistributedDataParallel averages the gradients
(NCCL on GPUs, gloo on CPUs), and rank 0 alone validates and writes files."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import CCTError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device_type: str) -> "Ranks":
        """This process's place in a torchrun launch (joining the process group), or a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if device_type == "cuda":
            require_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        interrupt_once()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch."""
        return index[self.rank::self.world]

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if self.world == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over all ranks."""
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def from_main(self, value):
        """Rank 0's `value` (any picklable object), on every rank."""
        if self.world > 1:
            shared = [value]
            dist.broadcast_object_list(shared, src=0)
            return shared[0]
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def interrupt_once() -> None:
    """Let Ctrl-C interrupt this rank once. It reaches a rank twice: from the terminal, then from torchrun's
    agent, which forwards it as it stops the ranks; the second, landing in the first one's clean-up or at exit,
    cut that short with a traceback. Only where Python's own handler is in place, in the main thread (the only
    one that may set handlers)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


def require_gpus(processes: int) -> None:
    """Data-parallel training on CUDA takes one GPU per process on a machine (NCCL refuses to share one)."""
    available = torch.cuda.device_count()
    if processes > available:
        raise CCTError(f"{processes} processes on CUDA need one GPU each, and this machine has {available} "
                       f"(use --nproc {max(available, 1)}, or --device cpu)")
