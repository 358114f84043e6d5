"""The processes of a run: one, or those ``torchrun`` started, through ``torch.distributed``.

Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables) the process group is initialised here, with NCCL on GPUs and gloo on the CPU, unless
the caller initialised one already (then it is used and left open). Without ``torchrun`` the run
is one process and nothing is initialised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Processes", "shard"]

T = TypeVar("T")
#: How long a process waits for the others at a barrier (rank 0 writes the summary meanwhile).
TIMEOUT = timedelta(hours=2)


def shard(chunks: Sequence[T], rank: int, world: int) -> list[T]:
    """The chunks of ``rank``: every ``world``-th from position ``rank``.

    Together the ranks cover every chunk exactly once: no duplicates, no gaps and no padding
    (unlike ``DistributedSampler``, which repeats items to even the ranks out).
    """
    return list(chunks[rank::world])


def _device(device: Any, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


@dataclass
class Processes:
    """This process's place in the run: rank, number of processes, device.

    Attributes
    ----------
    rank, world, local_rank : int
        As ``torch.distributed`` and ``torchrun`` define them.
    device : torch.device
        Where this process computes (``cuda:LOCAL_RANK`` for ``"cuda"`` under ``torchrun``).
    owns_group : bool
        The process group was initialised here, so :meth:`close` destroys it.
    """

    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @classmethod
    def start(cls, device: Any = None) -> Processes:
        """Join the run: an initialised process group, the ``torchrun`` one, or one process."""
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = _device(device, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, device)
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            if not dist.is_available():
                raise RuntimeError(
                    "funcattr.datasets: WORLD_SIZE > 1 (torchrun?) but this torch build has no "
                    "torch.distributed; every process would compute every item. Run one "
                    "process, or use a torch build with distributed support."
                )
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=TIMEOUT)
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, device, True)
        return cls(0, 1, local_rank, device)

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world > 1

    def broadcast(self, value: Any) -> Any:
        """``value`` of rank 0, on every rank (picklable values)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every process's ``value`` in rank order on rank 0 (None on the others)."""
        if not self.distributed:
            return [value]
        values = [None] * self.world if self.rank == 0 else None
        dist.gather_object(value, values, dst=0)
        return values

    def barrier(self) -> None:
        """Wait until every process arrives here."""
        if not self.distributed:
            return
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if it was initialised here."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
