"""Leaner saved activations for the two Llama-family pieces that keep more than their backward needs.

Counted per token and block with benchmarks/activation_memory.py (SmolLM2-1.7B shape, bf16 on a
GPU's terms, fused LoRA dropout: 108 KiB):
- The gated MLP, down(silu(gate(x)) * up(x)), keeps gate's output for silu, silu's output and up's
  output for the product, and the product for down: four tensors of the intermediate width.
  `_SiluMul` keeps gate's and up's outputs only and recomputes silu in backward (one elementwise
  pass, no matmul): one tensor of the intermediate width less (16 KiB in bf16, 32 KiB in fp32).
- RMSNorm upcasts its input to fp32 and keeps that copy (8 KiB per norm under bf16). `_RMSNorm`
  keeps the input as it came and its per-row scale: 4 KiB less per norm under bf16 (nothing
  changes in fp32, where the input is the copy).
- The product silu(gate) * up and each norm's output are kept once more by the adapters that
  read them (lora_A of down, and of q, k, v, gate, up). Both are one elementwise pass from tensors
  their producer keeps anyway, so they are marked `rebuildable` and a fused adapter
  (fused_lora.py) keeps those tensors and rebuilds its input in backward: 16 KiB + 2 x 4 KiB
  less in bf16.
Together: 106 -> 60 KiB per token and block on that shape (benchmarks/README.md).
Liger-Kernel and Unsloth do the same in Triton kernels, which need a GPU; these are plain torch,
so they run (and are tested) on a CPU too, and torch.compile fuses them on a GPU.

Call point: `lean_activations(model)` from the loop (and the dry run's probe, which must count what
the loop keeps), before the model is cast, sharded or compiled. Classes are swapped in place, so
state-dict keys are unchanged. The forward values are bit-identical: each module is probed
before its swap, and one with other math (Gemma's (1 + weight) norm, an MLP with another
activation) keeps its own forward. Nothing is kept for resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up, keeping gate and up only (silu is recomputed in backward)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:  # as autograd does: the product's grad cast to silu's dtype first
            grad_gate = torch.ops.aten.silu_backward((grad * up).to(gate.dtype), gate)
        if ctx.needs_input_grad[1]:
            grad_up = (grad * F.silu(gate)).to(up.dtype)
        return grad_gate, grad_up


class _RMSNorm(torch.autograd.Function):
    """weight * (x / rms(x)), computed in fp32 as Llama's RMSNorm does, keeping x as it came and 1/rms."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        """Returns the output and 1/rms (per row, not differentiable: see `_lean_norm_forward`)."""
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.mark_non_differentiable(rstd)
        return weight * (x32 * rstd).to(x.dtype), rstd

    @staticmethod
    def backward(ctx, grad, _grad_rstd):
        x, weight, rstd = ctx.saved_tensors
        normed = x.to(torch.float32) * rstd
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            g = (grad * weight).to(x.dtype).to(torch.float32)
            grad_x = (rstd * (g - normed * (g * normed).mean(-1, keepdim=True))).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad * normed.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, None


def rebuildable(out: torch.Tensor, rebuild, *inputs: torch.Tensor) -> torch.Tensor:
    """Mark `out` as `rebuild(*inputs)` exactly, where its producer keeps `inputs` for backward anyway.
    Not while compiling: Inductor's partitioner chooses what to recompute there."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        out._tuneline_rebuild = (rebuild, inputs)
    return out


def kept_form(x: torch.Tensor):
    """What a consumer that needs x in backward should keep: (tensors, rebuild), where x is
    rebuild(*tensors), or ((x,), None) for a tensor not marked `rebuildable`."""
    rebuild, inputs = getattr(x, "_tuneline_rebuild", (None, (x,)))
    return inputs, rebuild


def _normed(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    return weight * (x.to(torch.float32) * rstd).to(x.dtype)  # _RMSNorm's forward, from its saved tensors


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _lean_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    out, rstd = _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)
    return rebuildable(out, _normed, hidden_states, self.weight, rstd)


def _lean_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    return self.down_proj(rebuildable(_SiluMul.apply(gate, up), _silu_mul, gate, up))


_SUBCLASSES: dict[tuple[type, object], type] = {}


def _lean_class(cls: type, forward) -> type:
    """cls with `forward` replaced, made once per class (a subclass: isinstance checks still hold)."""
    key = (cls, forward)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Lean{cls.__name__}", (cls,), {"forward": forward})
    return _SUBCLASSES[key]


def _is_rms_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (isinstance(weight, nn.Parameter) and weight.dim() == 1 and weight.is_floating_point()
            and isinstance(getattr(module, "variance_epsilon", None), float)
            and not list(module.children()))


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj",
                                                                           "act_fn"))


def _same_forward(module: nn.Module, forward, width: int) -> bool:
    """The module's own forward and `forward` give the same values on a probe (eval mode, no grad, and
    a private generator: the run's random stream and dropout are untouched)."""
    weight = next(module.parameters())
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, width, generator=gen).to(weight.device, weight.dtype)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            return torch.equal(module(probe), forward(module, probe))
    except Exception:  # noqa: BLE001 - a module that cannot take the probe keeps its own forward
        return False
    finally:
        for m, training in modes:
            m.training = training


def lean_activations(model: nn.Module) -> tuple[int, int]:
    """Swap in the lean RMSNorm and gated-MLP forwards where they compute the same values;
    returns (norms, mlps) swapped."""
    norms = mlps = 0
    for module in model.modules():
        if type(module) in _SUBCLASSES.values():
            continue
        if _is_rms_norm(module) and _same_forward(module, _lean_norm_forward, module.weight.shape[0]):
            module.__class__ = _lean_class(type(module), _lean_norm_forward)
            norms += 1
        elif _is_gated_mlp(module) and _same_forward(module, _lean_mlp_forward, _in_width(module.gate_proj)):
            module.__class__ = _lean_class(type(module), _lean_mlp_forward)
            mlps += 1
    return norms, mlps


def _in_width(linear: nn.Module) -> int:
    """The input width of a projection, plain or wrapped by an adapter (PEFT keeps `in_features`)."""
    return int(getattr(linear, "in_features", None) or linear.weight.shape[1])
