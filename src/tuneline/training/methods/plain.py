"""Methods that train the model's own weights: all of them (full), or the head and top blocks (freeze)."""

from __future__ import annotations

import torch.nn as nn

from ...errors import UserError
from .layers import find_blocks, head_modules, train_modules

FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm")


def train_all(model: nn.Module, recipe, task) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def freeze(model: nn.Module, recipe, task) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    train_modules(model, head_modules(model, task))
    n = recipe.freeze.train_layers
    blocks = find_blocks(model)
    if n > 0 and blocks is not None:
        for block in list(blocks)[-n:]:
            for p in block.parameters():
                p.requires_grad_(True)
    if not task.new_head and n > 0:
        # No new head: train the final norm with the top blocks. The output layer stays
        # frozen: it is often tied to the input embeddings, which would then move too.
        for name, mod in model.named_modules():
            if name.count(".") <= 1 and name.rsplit(".", 1)[-1] in FINAL_NORMS:
                for p in mod.parameters():
                    p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("freeze.train_layers: nothing left to train; set it to 1 or more")
    return model
