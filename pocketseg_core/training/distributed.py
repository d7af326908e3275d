"""``torchrun`` support: DistributedDataParallel inside a fold, or folds spread over ranks.

Two modes (``TrainingConfig.distributed_mode``):

* ``"folds"`` (default): rank ``r`` trains folds ``r+1, r+1+W, ...`` (W = world size) on its own
  device, with no gradient exchange: k-fold cross-validation is embarrassingly parallel, so this
  scales best when there are at least as many folds as GPUs.
* ``"ddp"``: every rank trains every fold together; the model is wrapped in
  :class:`torch.nn.parallel.DistributedDataParallel`, each rank samples its own patches
  (seed + rank), so the effective batch is ``W * batch_size``. Every rank validates (the weights
  are identical, so are the decisions); only rank 0 writes files.

After the folds, rank 0 alone predicts the out-of-fold cases and writes the report; the other
ranks wait at a barrier. Launch: ``torchrun --nproc_per_node=N -m pocketseg_core train ...``
(NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pocketseg_core.errors import PocketSegError

DISTRIBUTED_MODES = ("folds", "ddp")


@dataclass
class DistributedContext:
    """Where this process stands in a distributed run (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "folds"

    def __post_init__(self) -> None:
        if self.mode not in DISTRIBUTED_MODES:
            raise PocketSegError(f"unknown distributed mode {self.mode!r}; use one of {DISTRIBUTED_MODES}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def uses_ddp(self) -> bool:
        return self.enabled and self.mode == "ddp"

    def barrier(self) -> None:
        if self.enabled and dist.is_available() and dist.is_initialized():
            dist.barrier()

    def folds_to_train(self, n_folds: int) -> list[int]:
        """1-based fold numbers this rank trains."""
        if not self.enabled or self.mode == "ddp":
            return list(range(1, n_folds + 1))
        return [fold for fold in range(1, n_folds + 1) if (fold - 1) % self.world_size == self.rank]

    def device_for(self, device: torch.device) -> torch.device:
        """With several CUDA ranks on a node, each takes the GPU of its local rank."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return device


def context_from_environment(mode: str = "folds") -> DistributedContext:
    """The context of this process: from an initialised process group, or from torchrun's
    environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; the group is initialised here with NCCL
    when CUDA is present, else gloo), or a single process."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, mode)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(mode=mode)
    if not dist.is_available():
        raise PocketSegError("this torch build has no torch.distributed; run without torchrun")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, mode)


def wrap_model(model: torch.nn.Module, context: DistributedContext, device: torch.device) -> torch.nn.Module:
    """The model wrapped in DDP when the context says so (else unchanged)."""
    if not context.uses_ddp:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (for state dicts and validation)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
