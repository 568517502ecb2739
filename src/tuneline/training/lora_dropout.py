"""LoRA's dropout fused into the adapter's first matmul, so the dropped copy of the input is never kept.

PEFT computes `lora_B(lora_A(dropout(x.to(A's dtype))))` for every adapted projection. For the
backward pass, lora_A keeps its input (the dropped copy, cast) and the dropout keeps its mask, once
per projection: q, k and v each keep their own copy of the same x. Counted with
benchmarks/activation_memory.py on the SmolLM2-1.7B shape in bf16, that is 68 of the 194 KiB of
activations per token and block; on a CPU in fp32, 5 bytes per element per projection.

Fused, each adapter keeps only its input x as it came (the one tensor q, k and v share) and the
seed of its mask (on a CPU the one-byte mask itself, see KEEPS_MASK); backward redraws the mask
and rebuilds the dropped copy. The values and the
gradients are those of dropout followed by the linear layer with the same mask (tested); the masks
are drawn from the device's generator, seeded from torch's default one, so `torch.manual_seed`
and activation checkpointing's RNG replay apply as to torch's dropout.

Adapters without dropout take the same path with p = 0 (no mask): what they keep is then only x
as it came, or the tensors its producer keeps anyway when x is `rebuildable`
(lean_activations.py).

Applied for training only (`fuse_lora_dropout` from the loop); eval mode runs the plain linear
layer. State-dict keys are unchanged: the adapter's `lora_A` keeps its module, only its class is
swapped, and PEFT's dropout module becomes an identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast_dropout import keep_lanes
from .lean_activations import kept_form

# Device types that keep the one-byte mask for backward instead of redrawing it: redrawing costs
# a CPU ~7 % of a step (random bits at memory speed, twice); a GPU draws nearly free, and memory is
# what it lacks. (benchmarks/activation_memory.py empties it to count what a GPU keeps.)
KEEPS_MASK = ("cpu",)


def keep_mask(shape: torch.Size, p: float, seed: int, device: torch.device) -> torch.Tensor:
    """The elements dropout keeps (probability 1 - p), a pure function of the seed. On a CPU, 64
    random bits read as four 16-bit lanes (torch's per-element Bernoulli is ~5x slower there; p is
    rounded to a multiple of 1/65536, see fast_dropout.py); elsewhere uniform draws against p."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cpu":
        return keep_lanes(shape, p, gen)
    return torch.rand(shape, device=device, generator=gen) >= p


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What autocast would run the matmul in; the weight's dtype without autocast."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype


class _DroppedLinear(torch.autograd.Function):
    """F.linear(dropout(x), weight) keeping x and a seed instead of the dropped copy and its mask."""

    @staticmethod
    def forward(ctx, x, weight, p: float, seed: int, dtype: torch.dtype):
        scale = 1.0 / (1.0 - p)
        keep = keep_mask(x.shape, p, seed, x.device) if p > 0 else None  # p = 0: no dropout, x kept lean
        dropped = x.to(dtype) if keep is None else torch.where(keep, x, 0).to(dtype).mul_(scale)
        # x itself, or what its producer keeps anyway and rebuilds it from (lean_activations.py)
        x_form, ctx.rebuild = kept_form(x)
        ctx.kept_mask = keep is not None and x.device.type in KEEPS_MASK
        ctx.save_for_backward(weight, *([keep] if ctx.kept_mask else []), *x_form)
        ctx.p, ctx.seed, ctx.dtype, ctx.scale = p, seed, dtype, scale
        return F.linear(dropped, weight.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        weight, *rest = ctx.saved_tensors
        keep, x_form = (rest[0], rest[1:]) if ctx.kept_mask else (None, rest)
        x = ctx.rebuild(*x_form) if ctx.rebuild else x_form[0]
        if keep is None and ctx.p > 0:
            keep = keep_mask(x.shape, ctx.p, ctx.seed, x.device)
        drop = (lambda t: t) if keep is None else (lambda t: torch.where(keep, t, 0).mul_(ctx.scale))
        grad = grad.to(ctx.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = drop(grad @ weight.to(ctx.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = drop(x.to(ctx.dtype))
            grad_w = (grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, x.shape[-1])).to(weight.dtype)
        return grad_x, grad_w, None, None, None


class DroppedLoraA(nn.Linear):
    """An adapter's lora_A with its dropout inside (class swapped in place; `p` set by the swap)."""

    p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.bias is not None:
            return super().forward(x.to(self.weight.dtype) if not torch.is_autocast_enabled(x.device.type) else x)
        # torch's default CPU generator: manual_seed applies (none drawn without dropout)
        seed = int(torch.randint(2 ** 62, (1,))) if self.p > 0 else 0
        return _DroppedLinear.apply(x, self.weight, self.p, seed, _compute_dtype(x, self.weight))


def _vanilla_lora_layers() -> tuple[type, ...]:
    """PEFT's LoRA layer classes whose forward is lora_B(lora_A(dropout(x))): the plain one and
    the one around a 4-bit base (QLoRA)."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return ()
    try:
        from peft.tuners.lora.bnb import Linear4bit as Lora4bit
    except (ImportError, AttributeError):  # no bitsandbytes: PEFT defines no 4-bit class
        return (LoraLinear,)
    return LoraLinear, Lora4bit


def fuse_lora_dropout(model: nn.Module) -> int:
    """Move every plain LoRA adapter's dropout into its lora_A; returns how many. Adapters without
    dropout (PEFT's identity) get the fused lora_A too, with p = 0: it keeps the input lean as well
    (a rebuildable one as its producer's tensors, lean_activations.py). DoRA and other variants
    keep PEFT's own path (they use the dropped x elsewhere too)."""
    kinds = _vanilla_lora_layers()
    fused = 0
    for layer in model.modules():
        if not isinstance(layer, kinds):
            continue
        names = [n for n, drop in layer.lora_dropout.items() if type(drop) in (nn.Dropout, nn.Identity)
                 and n not in layer.lora_variant and type(layer.lora_A[n]) is nn.Linear]
        for name in names:
            a = layer.lora_A[name]
            a.__class__ = DroppedLoraA
            a.p = getattr(layer.lora_dropout[name], "p", 0.0)
            layer.lora_dropout[name] = nn.Identity()
        if names and len(names) == len(layer.lora_A):
            # x reaches lora_A as it came (the tensor q, k and v share), not as PEFT's cast copy each
            layer.cast_input_dtype_enabled = False
        fused += len(names)
    return fused
