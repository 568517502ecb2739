"""Frozen base weights of an adapter run kept in the compute dtype (bf16 or fp16), while the
adapter's weights and their optimizer state stay fp32.

Under autocast, fp32 weights are cast to the compute dtype at every matmul, and the cast copy of
each frozen weight is kept for the backward pass: an fp32 1.7B model holds 6.8 GB of weights plus
3.4 GB of copies during a step, where bf16 weights hold 3.4 GB and are read at half the bytes.
Before the adapter is merged they go back to fp32 (`restore_full_precision`), so its small deltas
are added at full precision and the saved model is fp32 as before (a CPU serves it in fp32).
On a CPU too when the run computes in bf16 (`precision: auto` picks it only where the CPU has
bf16 units): SmolLM2-135M + LoRA, 2 x 512 tokens, AMX, one forward + backward 3.2-3.4 s against
3.6-3.8 with fp32 frozen weights, peak RSS 2.4 against 3.2 GiB. Not under FSDP (its flat
parameters want one dtype per unit).
"""

from __future__ import annotations

import torch

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def frozen_dtype(precision: str, adapter: bool, sharded: bool) -> torch.dtype | None:
    """The dtype the frozen weights are kept in for this run, or None to keep them as loaded.
    precision: the resolved one (bf16 | fp16 | fp32; Accelerate's "no" is fp32)."""
    if not adapter or sharded:
        return None
    return HALF.get(precision)


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Frozen floating-point parameters to `dtype`; returns how many were cast."""
    cast = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast += 1
    if cast:
        model._tuneline_frozen_cast = True
    return cast


def restore_full_precision(model: torch.nn.Module) -> None:
    """Undo `cast_frozen` (the values keep their half-precision rounding)."""
    if not getattr(model, "_tuneline_frozen_cast", False):
        return
    for p in model.parameters():
        if not p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    model._tuneline_frozen_cast = False
