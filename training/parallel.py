"""Data parallelism, kept apart from the model: DDP, or FSDP2 (`fully_shard` per block, then the root).

The same entry point runs single-process or under torchrun (which sets RANK/WORLD_SIZE/LOCAL_RANK):
gloo on CPU, nccl on CUDA. Gradient reduction: both wrappers *average* over ranks, so the trainer
multiplies each micro-batch loss by world_size after normalising it by the weight total of the global
batch; the summed gradients then equal the single-process gradient of that batch (tested).

FSDP2 on gloo: pytorch#162338 reports reduce-scatter averaging silently turning into a sum. We ask FSDP
for sum-only collectives followed by an explicit division by world_size (`set_force_sum_reduction_for_comms`),
which avoids ReduceOp.AVG on every backend; tests/test_distributed.py checks the result either way.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the torchrun process group if there is one; pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, mode: str) -> nn.Module:
    """mode: "none" | "ddp" | "fsdp". Returns the module to train through (FSDP2 shards in place)."""
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        # An explicit mesh keeps CPU runs on CPU even on a machine with GPUs (pytorch#132471).
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mesh": mesh, **({"mp_policy": mp} if info.device.type == "cuda" else {})}
        for block in model.blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
        return model
    if mode == "ddp" and info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    if mode not in ("none", "ddp"):
        raise ValueError(f"unknown parallel mode {mode!r}")
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool):
    """Skip the gradient reduction on all but the last micro-batch of a step."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        yield
    elif not sync and hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded gradients by parameter name (a collective under FSDP: call on every rank)."""
    out = {}
    for name, p in unwrap(model).named_parameters():
        g = p.grad
        if g is not None and hasattr(g, "full_tensor"):
            g = g.full_tensor()
        out[name] = None if g is None else g.detach().cpu().clone()
    return out


def get_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state dicts keyed by parameter name; collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def set_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict, optim_state: dict | None
):
    """Load full state dicts (every rank passes the same full dicts) into a plain, DDP or FSDP2 model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    if optimizer is not None and optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=opts)
