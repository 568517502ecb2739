"""memory.gradient_checkpointing: which transformer blocks recompute their activations in backward.

true: every block; false: none; a number k: the first k; auto: as few as keep the run's largest
piece of work within the memory it has. That is the device's free memory on a GPU (or
memory.limit_gib, when lower); on a CPU auto checkpoints only under memory.limit_gib, since its
micro-batches of 1,024 tokens keep activations small and recomputing costs a fifth of a step.

auto measures rather than models: one forward of a real piece under saved-tensor counting gives
each block's activation bytes per token (what autograd keeps, so what the device will hold, counted
exactly before anything runs out) and what the block keeps instead when checkpointed (its input).
`blocks_to_checkpoint` is the pure rule on those figures. A checkpointed block costs one more
forward of itself per step, hence as few as needed; which ones does not change the peak (every
block's activations are alive at the end of the forward), so they are the first k. Under FSDP
auto checkpoints every block (the counting cannot tell the weights FSDP gathers from activations).

Call point: `Trainer.__init__`, after the model is placed and its optimizer built (`plan_for`);
`apply_method` has already switched checkpointing on for every block unless the recipe says false.
Nothing is kept for resume: a resumed run measures again.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch
from torch import nn

from .methods.layers import find_blocks

SAFETY = 0.9           # of the room: the allocator's fragmentation, the evaluation's extra tensors
PROBE_TOKENS = 1024    # the measured piece is cut to about this many tokens


def checkpointable_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks that can recompute themselves (transformers' GradientCheckpointingLayer)."""
    blocks = find_blocks(model)
    return [b for b in blocks or [] if hasattr(type(b), "gradient_checkpointing")]


def set_checkpointed(model: nn.Module, k: int) -> int:
    """Checkpoint the first k blocks and no others; returns how many are checkpointed. Only blocks
    that `apply_method` enabled can be (they hold the checkpoint function)."""
    blocks = [b for b in checkpointable_blocks(model) if hasattr(b, "_gradient_checkpointing_func")]
    for i, block in enumerate(blocks):
        block.gradient_checkpointing = i < k
    return min(k, len(blocks))


@dataclass
class ActivationCost:
    """Bytes per computed token: per_block[i] kept by block i, kept_checkpointed[i] what it keeps
    when checkpointed (its input), other: outside the blocks (embeddings, output layer, loss)."""

    per_block: list[float]
    kept_checkpointed: list[float]
    other: float


def blocks_to_checkpoint(cost: ActivationCost, tokens: int, room: float) -> int:
    """The fewest blocks to checkpoint, first to last, so that a piece of `tokens` computed tokens
    keeps at most `room` bytes of activations: the blocks' own or their inputs, plus, once any is
    checkpointed, one block's activations alive again while it recomputes. len(per_block) when even
    that does not fit (the caller says so)."""
    n = len(cost.per_block)
    for k in range(n + 1):
        kept = cost.other + sum(cost.kept_checkpointed[:k]) + sum(cost.per_block[k:])
        recompute = max(cost.per_block[:k], default=0.0)
        if tokens * (kept + recompute) <= room:
            return k
    return n


def measure(run_loss, tokens: int, model: nn.Module) -> ActivationCost:
    """Run run_loss() once (no backward) with no block checkpointed, counting the bytes of the
    distinct storages autograd saves, weights excluded; per token of the piece's `tokens`."""
    blocks = checkpointable_blocks(model)
    before = [b.gradient_checkpointing for b in blocks]
    set_checkpointed(model, 0)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    spans: list[list[int]] = []   # per block: saved bytes when it starts, when it ends
    inputs: list[int] = []

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    def started(module, args, kwargs):
        spans.append([sum(seen.values()), 0])
        inputs.append(_input_bytes(args, kwargs))

    def ended(module, args, output):
        spans[-1][1] = sum(seen.values())

    hooks = [h for b in blocks for h in (b.register_forward_pre_hook(started, with_kwargs=True),
                                          b.register_forward_hook(ended))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_loss()
    finally:
        for h in hooks:
            h.remove()
        for b, was in zip(blocks, before):
            b.gradient_checkpointing = was
    per_block = [(end - start) / tokens for start, end in spans]
    return ActivationCost(per_block=per_block, kept_checkpointed=[x / tokens for x in inputs],
                          other=max(0.0, sum(seen.values()) / tokens - sum(per_block)))


def _input_bytes(args, kwargs) -> int:
    """The hidden states a checkpointed block keeps: its first tensor argument."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.numel() * v.element_size()
    return 0


def room_bytes(device: torch.device, limit_gib: float | None, optimizer_bytes: int) -> float | None:
    """Bytes the step's activations may take: the device's free memory (a GPU's, with what torch
    holds cached but unused) or memory.limit_gib less what is resident now, minus the optimizer
    state and gradients not yet allocated, with a margin. None: no limit applies (a CPU without
    memory.limit_gib)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) \
            - torch.cuda.memory_allocated(device)
        resident = torch.cuda.memory_allocated(device)
    elif limit_gib is None:
        return None
    else:
        free, resident = psutil.virtual_memory().available, psutil.Process().memory_info().rss
    if limit_gib is not None:
        free = min(free, limit_gib * 2 ** 30 - resident)
    return max(0.0, (free - optimizer_bytes) * SAFETY)


def plan(memory, model: nn.Module, device: torch.device, probe, largest_tokens: int,
         pending_bytes: int, sharded: bool = False) -> tuple[int, str]:
    """(blocks to checkpoint, a line for the log) for the recipe's memory section.
    probe() -> (run_loss, computed tokens): one real piece's forward, for auto's measurement;
    largest_tokens: the computed tokens of the run's largest piece; pending_bytes: gradients and
    optimizer state not allocated yet. Under FSDP auto checkpoints every block: the weights it
    gathers for a block are not the model's parameters, so counting would take them for activations."""
    n = len(checkpointable_blocks(model))
    setting = memory.gradient_checkpointing
    if setting != "auto" or n == 0 or sharded:
        k = n if setting is True or setting == "auto" else min(int(setting), n)
        why = "auto under FSDP" if setting == "auto" else "memory.gradient_checkpointing"
        return k, (f"Activation checkpointing: {k} of {n} blocks ({why})" if k else "")
    room = room_bytes(device, memory.limit_gib, pending_bytes)
    if room is None:
        return 0, ""
    run_loss, tokens = probe()
    cost = measure(run_loss, tokens, model)
    k = blocks_to_checkpoint(cost, largest_tokens, room)
    need = largest_tokens * (cost.other + sum(cost.per_block))
    line = (f"Activations: {sum(cost.per_block) / 2**20:.2f} MiB per token in {n} blocks (measured); the largest "
            f"piece, {largest_tokens:,} tokens, keeps {need / 2**30:.1f} GiB with {room / 2**30:.1f} GiB to spare: ")
    line += f"checkpointing {k} of {n} blocks" if k else "no checkpointing"
    fits = largest_tokens * (cost.other + sum(cost.kept_checkpointed) + max(cost.per_block, default=0)) <= room
    if k == n and not fits:
        line += (". Even so it may not fit: lower memory.micro_batch_tokens (a piece's tokens) or "
                 "train.max_length")
    return k, line
