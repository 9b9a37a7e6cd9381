"""Where a training run executes: the device, the backend switches and the DDP process group.

One process unless ``torchrun`` starts several (``WORLD_SIZE > 1``); then :meth:`DistContext.from_env`
joins (or creates) the process group and every collective the trainer needs goes through the context,
which is a no-op for a single process.  docs/TRAINING.md has the multi-GPU commands.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "pick_device", "configure_backends", "autocast_dtype"]


@dataclasses.dataclass
class DistContext:
    """Process rank and world size (1 process unless launched by torchrun with WORLD_SIZE > 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> DistContext:
        """Join the process group described by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend, init_method="env://",
                                    timeout=_dt.timedelta(minutes=30))
            owns = True
        return cls(rank=rank, local_rank=local, world_size=world, owns_group=owns)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (``[obj]`` for one process)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(spec: str) -> torch.device:
    """``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels (same seed and hardware -> same weights), or cuDNN autotuning on GPUs."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for ``amp`` ``bf16`` (or ``auto`` on CUDA), else None (float32)."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if use and device.type != "cuda":
        raise ValueError("amp 'bf16' needs a CUDA device; use amp 'off' (or 'auto') on CPU")
    return torch.bfloat16 if use else None
