"""Dropout for training on a CPU, about 5x faster than torch's own there.

torch's CPU dropout draws one Bernoulli sample per element from its generator: measured here at
~13 ms for a 1024 x 1536 activation, and 14 % of a LoRA step of SmolLM2-135M (PEFT puts a
dropout in front of every adapted projection). This one draws 64 random bits at a time and
reads them as four 16-bit lanes, one per element (~2.6 ms). The drop probability is thus
rounded to a multiple of 1/65536 (0.05 -> 0.050003). It uses torch's default CPU generator, so
`torch.manual_seed` and checkpointing's RNG replay apply as they do to torch's dropout.
"""

from __future__ import annotations

import torch
from torch import nn

_LANES = 65536


def keep_lanes(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The CPU elements dropout keeps (probability 1 - p, rounded to 1/65536), drawn from
    `generator` (torch's default CPU one when None), 64 bits a draw."""
    n = shape.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2 ** 63), None, generator=generator)
    lanes = bits.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return lanes >= round(p * _LANES) - _LANES // 2


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_lanes(x.shape, p)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)  # one byte per element, as torch's own dropout keeps
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


class FastDropout(nn.Dropout):
    """nn.Dropout with the fast CPU kernel in training; the same module otherwise (eval, GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or not x.is_floating_point():
            return super().forward(x)
        if self.p == 1:
            return x * 0.0
        return _Dropout.apply(x, self.p)


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every nn.Dropout with p > 0 for FastDropout (same p); returns how many. Dropout
    modules hold no weights, so saved checkpoints are unchanged."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Dropout and child.p > 0]
    for parent, name, child in swaps:
        setattr(parent, name, FastDropout(child.p, inplace=False))
    return len(swaps)
