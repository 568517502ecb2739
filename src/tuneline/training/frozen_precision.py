"""Frozen base weights of an adapter run kept in the compute dtype (bf16 or fp16), while the
adapter's weights and their optimizer state stay fp32.

Under autocast, fp32 weights are cast to the compute dtype at every matmul, and the cast copy of
each frozen weight is kept for the backward pass: an fp32 1.7B model holds 6.8 GB of weights plus
3.4 GB of copies during a step, where bf16 weights hold 3.4 GB and are read at half the bytes.
Before the adapter is merged they go back to their loaded fp32 values (`restore_full_precision`,
reading the base model again), so its small deltas are added at full precision to the weights the
adapter will be loaded onto, and the saved model is fp32 as before (a CPU serves it in fp32).
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


def restore_full_precision(model: torch.nn.Module, load_base=None) -> int:
    """Undo `cast_frozen` before a merge. With `load_base` (a callable returning the base model as
    loaded), each frozen weight gets its exact loaded fp32 values back, so model/ is the base plus
    the adapter's delta and adapter/ on the original base reproduces it (the export checks that);
    the adapter trained against the rounded values, which differ by bf16's rounding only. Weights
    it cannot match by name and shape are upcast, keeping that rounding. Returns how many got
    their loaded values."""
    if not getattr(model, "_tuneline_frozen_cast", False):
        return 0
    cast = [(n, p) for n, p in model.named_parameters()
            if not p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    loaded = dict(load_base().named_parameters(remove_duplicate=False)) if load_base else {}
    exact = 0
    for name, p in cast:
        original = loaded.get(_loaded_name(name))
        if original is not None and original.shape == p.shape and original.is_floating_point():
            p.data = original.detach().to(device=p.device, dtype=torch.float32).clone()  # not a view of the loaded file
            exact += 1
        else:
            p.data = p.data.float()
    model._tuneline_frozen_cast = False
    return exact


def _loaded_name(name: str) -> str:
    """A PEFT-wrapped parameter's name in the model as loaded: without PEFT's prefix and the
    wrappers around the original module (LoRA's base_layer, modules_to_save's original_module)."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")
