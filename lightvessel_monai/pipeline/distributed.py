"""Running the distillation under ``torchrun``: the process group, the student's DDP and rank 0's own work.

Which handlers run on rank 0 only (those that only write) is declared beside the handlers:
:func:`lightvessel_monai.handlers.rank0_handlers`.

``bundle/configs/multi_gpu_train.json`` calls these from config. The plan it gives ``run`` is:

1. the preparation stages (teacher, GKD's ACT) run *before* the process group exists, on plain, unsharded data
   loaders (``train#local_dataloader``): the first rank to take the stage's file lock trains and caches, the
   others wait on the lock and then load the cache, so a stage runs once, not once per rank;
2. :func:`init_process_group` (NCCL on CUDA, gloo on the CPU), then the student is wrapped in
   :class:`~torch.nn.parallel.DistributedDataParallel` (:func:`data_parallel`) and trained on sharded data;
3. the term parameters (adapters, side heads, MSAN headers) and the critic keep in step with the student's DDP by
   the same operation DDP performs, a mean all-reduce of their gradients before every optimiser step
   (:func:`average_gradients`, called by ``DistillationTrainer`` and ``AdversarialUpdateHandler`` whenever a process
   group is up). They are not wrapped in DDP themselves: the critic runs several forwards per step and WGAN-GP's
   double backward, and the term parameters are used outside the student's forward, neither of which DDP supports;
4. rank 0 alone writes the report (:func:`run_on_rank0`), then :func:`destroy_process_group`.

Every function here is a no-op (or the single-process answer) when no process group is initialised, so the same
code runs in one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lightvessel_monai.errors import ConfigKeyError

__all__ = [
    "average_gradients",
    "broadcast_tensors",
    "data_parallel",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_distributed",
    "is_not_rank0",
    "is_rank0",
    "local_device",
    "require_torchrun",
    "run_on_rank0",
    "unwrap",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank0() -> bool:
    """True in the process that writes files: rank 0, or the only process."""
    return get_rank() == 0


def is_not_rank0() -> bool:
    """True in a torchrun worker other than rank 0, also before its process group is up (``RANK`` is set then)."""
    return int(os.environ.get("RANK", "0")) > 0 or get_rank() > 0


def any_rank(flag: bool, device: torch.device | str | None = None) -> bool:
    """Whether ``flag`` holds on any rank (a max all-reduce; ``flag`` itself without a process group).

    A rule that stops training must stop every rank at the same iteration: a rank that raises alone leaves the
    others waiting in the next collective for ever. ``device``: where the reduced tensor lives (CUDA under NCCL).
    """
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device or local_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU (``LOCAL_RANK`` is set by ``torchrun``)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def require_torchrun() -> None:
    """A one-line error, before anything is trained, when the multi-GPU overlay runs outside ``torchrun``."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigKeyError(
            f"bundle/configs/multi_gpu_train.json runs under torchrun, which sets {', '.join(missing)}: start it with "
            "'torchrun --nproc_per_node=N -m monai.bundle run training --config_file ...'"
        )


def init_process_group(backend: str | None = None) -> bool:
    """Join the ``torchrun`` process group (``env://``): NCCL when CUDA is available, gloo otherwise.

    Returns ``True`` once a group is up; a process started without ``torchrun`` gets :func:`require_torchrun`'s
    one-line error instead of waiting forever for peers.
    """
    if dist.is_initialized():
        return True
    require_torchrun()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend)
    logger.info(f"rank {get_rank()} of {get_world_size()} joined the process group ({backend})")
    return True


def destroy_process_group() -> None:
    """Wait for every rank, then leave the process group (nothing without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_on_rank0(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 (or in the only process) while the other ranks wait at a barrier.

    For work that writes files and uses no collective (the report); its result on rank 0, ``None`` elsewhere.
    """
    result = fn(*args, **kwargs) if is_rank0() else None
    if is_distributed():
        dist.barrier()
    return result


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, or ``network`` itself."""
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return network.module
    return network


def data_parallel(network: nn.Module, **kwargs: Any) -> nn.Module:
    """``network`` in ``DistributedDataParallel`` when a process group is up; ``network`` itself otherwise.

    On CUDA the module must already be on this rank's device (``device_ids`` is set from it). DDP broadcasts rank 0's
    parameters and buffers at construction, so every rank starts from the same student.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return network
    device = next(network.parameters()).device
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
        kwargs.setdefault("output_device", device.index)
    return nn.parallel.DistributedDataParallel(network, **kwargs)


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks, as DDP does for the parameters it wraps.

    One all-reduce per dtype and device over the flattened gradients. A parameter without a gradient on every rank
    keeps ``grad = None`` (an optimiser then skips it, as in one process); one with a gradient on some ranks only
    counts zero for the others, as in DDP with unused parameters. Nothing happens without a multi-rank process group.
    """
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    for group in groups.values():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
        present = torch.tensor([float(p.grad is not None) for p in group], device=group[0].device)
        flat = torch.cat([_flat(grads), present.to(grads[0].dtype)])
        dist.all_reduce(flat)
        sums, counts = flat[: -len(group)], flat[-len(group) :]
        world = get_world_size()
        for p, g, count in zip(group, _unflat(sums, grads), counts.tolist(), strict=True):
            if count == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = g / world
            else:
                p.grad.copy_(g / world)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` (parameters, buffers) to every rank (nothing without a group)."""
    if not is_distributed():
        return
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            with torch.no_grad():
                dist.broadcast(tensor.data, src=src)
