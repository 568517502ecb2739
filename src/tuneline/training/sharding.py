"""Sharded data parallelism (`train.sharding: fsdp`) with PyTorch FSDP2 (`fully_shard`).

Every transformer block is one FSDP unit; a thin root module holds the rest (embeddings, final
norm, output layer, task head, PEFT prompt encoders). Parameters, gradients and AdamW state are
dim-0 shards (DTensors) on their rank; a unit's full weights exist only while it computes. Gradients are reduce-scattered and
averaged by FSDP itself, so the loop's manual all-reduce is skipped.

Every computation runs inside the root's forward, as a function of the model: the generate loss
calls the decoder and the output layer separately (output layer only where the loss counts),
which would bypass FSDP's hooks on the model's own forward and leave the root's weights sharded.

Checkpoints and the final model hold full tensors gathered rank by rank, with the same names and
the same optimizer-state layout as an unsharded run: the run folder is the same either way.
"""

from __future__ import annotations

import torch
from torch import nn


class ShardedRoot(nn.Module):
    """The FSDP root: `root(fn)` runs `fn(model)` with the root's weights gathered."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn):
        return fn(self.model)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: the classes a Transformers model lists in `_no_split_modules`
    (what Accelerate's FSDP auto-wrap uses), else the members of a ModuleList of one class
    (BERT lists none in Transformers 5)."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    found = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1:
            found.extend(m)
    return found


def shard(model: nn.Module, device: torch.device, world_size: int) -> tuple[ShardedRoot, int]:
    """Apply FSDP2 to `model` in place (bottom-up: blocks, then the root). Returns the root and the
    number of block units (0: the whole model is one unit, which still shards optimizer state)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    units = blocks(model)
    for m in reversed(units):  # children before the blocks that contain them
        # True: free each block's gathered weights after its forward, gather again for backward
        fully_shard(m, mesh=mesh, reshard_after_forward=True)
    root = ShardedRoot(model)
    fully_shard(root, mesh=mesh, reshard_after_forward=True)
    return root, len(units)


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU (a collective for a shard: every rank must call it in the same order)."""
    if is_sharded(t):
        t = t.full_tensor()
    return t.detach().cpu()


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a full tensor, placed as `like` (no communication: every rank holds `value`)."""
    from torch.distributed.tensor import distribute_tensor

    if not is_sharded(like):
        return value
    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict | None:
    """`optimizer.state_dict()` with every shard gathered: the unsharded layout (integer ids).
    Every rank takes part; those with keep=False (they write nothing) hold none of it."""
    sd = optimizer.state_dict()
    state = {}
    for i, s in sorted(sd["state"].items()):
        gathered = {k: full(v) if is_sharded(v) else v for k, v in sorted(s.items())}
        if keep:
            state[i] = gathered
    return {**sd, "state": state} if keep else None


def shard_optimizer_state(sd: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full optimizer state (as `full_optimizer_state` or an unsharded run saved it) cut to this
    rank's shards. Ids count the parameters group by group, as `Optimizer.state_dict` numbers them."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, s in sd["state"].items():
        p = params[int(i)]
        state[i] = {k: shard_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in s.items()}
    return {**sd, "state": state}


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip by the global norm over all shards (every rank gets the same value), left on the device."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if is_sharded(norm) else norm
