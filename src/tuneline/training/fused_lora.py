"""Each LoRA adapter as one autograd node for training, its dropout inside: no dropped copy of the
input kept, and a fraction of the host's work per step.

PEFT computes `base(x) + lora_B(lora_A(dropout(x.to(A's dtype)))) * scaling` through five modules
and as many autograd nodes per adapted projection. Two costs follow:
- Memory. lora_A keeps its input (the dropped copy, cast) and the dropout keeps its mask, once per
  projection: q, k and v each keep their own copy of the same x. Counted with
  benchmarks/activation_memory.py on the SmolLM2-1.7B shape in bf16, that is 68 of the 194 KiB of
  activations per token and block; on a CPU in fp32, 5 bytes per element per projection.
- Host time. Short steps on a GPU wait on the host, which pays per module call and per autograd
  node. With tiny tensors on this CPU (compute ~0), a SmolLM2 LoRA forward + backward of 24 blocks
  cost the host measurably more through PEFT's layers than through one node each (benchmarks/README.md).

Fused (`_Adapter`), the layer runs its frozen base as before and the adapter as one node that keeps
only x as it came (the one tensor q, k and v share, or what its producer keeps anyway when x is
`rebuildable`, lean_activations.py), lora_A's rank-r output, and the seed of its mask (on a CPU the
one-byte mask itself, see KEEPS_MASK); backward redraws the mask and rebuilds the dropped copy. The
values and gradients are PEFT's with the same mask (tested; bit-equal losses without dropout). The
masks are drawn from the device's generator, seeded from torch's default one, so `torch.manual_seed`
and activation checkpointing's RNG replay apply as to torch's dropout.

Applied for training only (`fuse_lora` from the loop, not under compile): the layer's class is
swapped in place for a subclass whose forward takes this path while training one plain adapter,
and PEFT's own forward otherwise (eval, merged, disabled, DoRA and other variants, a bias on
lora_B, several adapters). State-dict keys are unchanged; nothing is kept for resume.
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
    rounded to a multiple of 1/65536, see fast_dropout.py); elsewhere `drawn_keep`."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cpu":
        return keep_lanes(shape, p, gen)
    return drawn_keep(shape, p, gen, device)


def drawn_keep(shape: torch.Size, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """A GPU's mask (any device's, so tested here): one Bernoulli kernel writing a byte an element,
    where uniform draws and a comparison move nine."""
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p, generator=gen)


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What autocast would run the matmuls in; the weight's dtype without autocast."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype


class _Adapter(torch.autograd.Function):
    """base_out + lora_B(lora_A(dropout(x))) * scaling, keeping x (or its rebuild form), the rank-r
    output of lora_A and a seed, instead of the dropped copy, its mask and one node per module.
    The adapter is linear, so dropout's 1 / (1 - p) is folded into its scaling: the mask is applied
    as one multiply (no rescaled copy), in forward and in backward."""

    @staticmethod
    def forward(ctx, x, base_out, a, b, scaling: float, p: float, seed: int, dtype: torch.dtype):
        keep = keep_mask(x.shape, p, seed, x.device) if p > 0 else None  # p = 0: no dropout, x kept lean
        a_c, b_c = _as(a, dtype), _as(b, dtype)  # kept for backward, as autocast keeps its casts
        h = F.linear(_as(x if keep is None else x * keep, dtype), a_c)
        scale = scaling / (1.0 - p)
        delta = F.linear(h, b_c).mul_(scale)
        x_form, ctx.rebuild = kept_form(x)  # x itself, or what its producer keeps anyway (lean_activations.py)
        ctx.kept_mask = keep is not None and x.device.type in KEEPS_MASK
        ctx.save_for_backward(a_c, b_c, h, *([keep] if ctx.kept_mask else []), *x_form)
        ctx.p, ctx.seed, ctx.dtype, ctx.scale, ctx.param_dtypes = p, seed, dtype, scale, (a.dtype, b.dtype)
        return _as(base_out + delta, base_out.dtype)  # PEFT's sum, promoted then cast back as PEFT does

    @staticmethod
    def backward(ctx, grad):
        a, b, h, *rest = ctx.saved_tensors  # in the compute dtype
        keep, x_form = (rest[0], rest[1:]) if ctx.kept_mask else (None, rest)
        x = ctx.rebuild(*x_form) if ctx.rebuild else x_form[0]
        if keep is None and ctx.p > 0:
            keep = keep_mask(x.shape, ctx.p, ctx.seed, x.device)
        dtype = ctx.dtype
        grad_delta = _as(grad, dtype) * ctx.scale
        grad_h = grad_delta @ b
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_h @ a
            grad_x = _as(grad_x if keep is None else grad_x.mul_(keep), x.dtype)
        if ctx.needs_input_grad[2]:
            dropped = _as(x if keep is None else x * keep, dtype)
            grad_a = _as(grad_h.reshape(-1, grad_h.shape[-1]).T @ dropped.reshape(-1, x.shape[-1]), ctx.param_dtypes[0])
        if ctx.needs_input_grad[3]:
            grad_b = _as(grad_delta.reshape(-1, grad.shape[-1]).T @ h.reshape(-1, h.shape[-1]), ctx.param_dtypes[1])
        return grad_x, grad, grad_a, grad_b, None, None, None, None


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype; t itself when it is already (a no-op `.to` still costs the host a call)."""
    return t if t.dtype == dtype else t.to(dtype)


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The swapped layer's forward: one `_Adapter` node while training its one plain adapter."""
    name, p = self.fused_adapter
    if args or kwargs or not self.training or self.disable_adapters or self.merged \
            or self.active_adapters != [name]:
        return super(type(self), self).forward(x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    # torch's default CPU generator: manual_seed and checkpointing's replay apply (none drawn at p = 0)
    seed = int(torch.randint(2 ** 62, (1,))) if p > 0 else 0
    return _Adapter.apply(x, self.base_layer(x), a, b, self.scaling[name], p, seed, _compute_dtype(x, a))


def _vanilla_lora_layers() -> tuple[type, ...]:
    """PEFT's LoRA layer classes whose forward is base + lora_B(lora_A(dropout(x))) * scaling: the
    plain one and the one around a 4-bit base (QLoRA)."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return ()
    try:
        from peft.tuners.lora.bnb import Linear4bit as Lora4bit
    except (ImportError, AttributeError):  # no bitsandbytes: PEFT defines no 4-bit class
        return (LoraLinear,)
    return LoraLinear, Lora4bit


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    """cls with `_fused_forward`, made once per class (a subclass: PEFT's isinstance checks hold)."""
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_forward})
    return _FUSED_CLASSES[cls]


def _fusable(layer: nn.Module) -> tuple[str, float] | None:
    """(adapter name, dropout p) of a layer with one plain adapter; None for anything else."""
    if len(layer.lora_A) != 1:
        return None
    (name,) = layer.lora_A.keys()
    drop = layer.lora_dropout[name]
    if type(drop) not in (nn.Dropout, nn.Identity) or name in layer.lora_variant \
            or type(layer.lora_A[name]) is not nn.Linear or type(layer.lora_B[name]) is not nn.Linear \
            or layer.lora_B[name].bias is not None:
        return None
    return name, getattr(drop, "p", 0.0)


def fuse_lora(model: nn.Module) -> int:
    """Swap every LoRA layer with one plain adapter for the fused path; returns how many. Adapters
    without dropout take it too, with p = 0: it keeps the input lean as well (a rebuildable one as
    its producer's tensors, lean_activations.py). DoRA and other variants keep PEFT's own path."""
    kinds = _vanilla_lora_layers()
    fused = 0
    for layer in model.modules():
        if type(layer) not in kinds:  # a fused class is a subclass: swapped once
            continue
        adapter = _fusable(layer)
        if adapter is not None:
            layer.fused_adapter = adapter
            layer.__class__ = _fused_class(type(layer))
            fused += 1
    return fused
