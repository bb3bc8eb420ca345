"""The distribution over ranks: this process's place in a torchrun job, and agreeing on failures."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from galclip.errors import StoreError


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device_type: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch.distributed as dist

            if device_type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # object collectives need it
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, error: BaseException | None) -> None:
        """Collective: every rank learns whether any rank failed. The failing rank re-raises its own error;
        the others raise one naming it, instead of waiting at the next collective until the timeout."""
        if self.world > 1:
            import torch.distributed as dist

            messages: list = [None] * self.world
            dist.all_gather_object(messages, None if error is None else str(error))
            failed = [(r, m) for r, m in enumerate(messages) if m is not None]
            if failed and error is None:
                rank, message = failed[0]
                raise StoreError(f"rank {rank} stopped the job: {message}")
        if error is not None:
            raise error
