"""Which layers a method touches: the task head, the block stack, the default LoRA targets."""

from __future__ import annotations

import torch.nn as nn

from ...errors import UserError

# LoRA targets per architecture (model_type). Every linear layer of the blocks, which
# is what works best in practice (QLoRA paper); the head is trained in full instead.
LORA_TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "xlm-roberta": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "electra": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense", "output.dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

# Heads that are new or task-specific, always trained in full (PEFT: modules_to_save).
HEAD_NAMES = ("classifier", "score", "pooler", "pre_classifier")


def head_modules(model: nn.Module, task) -> list[str]:
    """The task's new head (a classifier), trained in full; none when the task adds no head."""
    if not task.new_head:
        return []
    found = []
    for name, mod in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in HEAD_NAMES and name.count(".") <= 1:
            # PEFT wraps leaf layers best: BERT's pooler is a module around one Linear.
            key = f"{last}.dense" if isinstance(getattr(mod, "dense", None), nn.Linear) else last
            if key not in found:
                found.append(key)
    return found


def find_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer blocks: the longest ModuleList in the model."""
    best = None
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (best is None or len(mod) > len(best)):
            best = mod
    return best


def default_lora_targets(model: nn.Module) -> list[str]:
    mtype = getattr(model.config, "model_type", "")
    if mtype in LORA_TARGETS:
        return LORA_TARGETS[mtype]
    # Unknown architecture: every Linear inside the blocks.
    names = set()
    blocks = find_blocks(model)
    if blocks is not None:
        for name, mod in blocks.named_modules():
            if isinstance(mod, nn.Linear):
                names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise UserError(f"lora.target_modules: no default for model type {mtype!r}; list the module names to adapt")
    return sorted(names)


def train_modules(model: nn.Module, names: list[str]) -> None:
    """Let every module called `name` (or ending in `.name`) train, with all it holds."""
    for mod_name, mod in model.named_modules():
        if any(mod_name == n or mod_name.endswith("." + n) for n in names):
            for p in mod.parameters():
                p.requires_grad_(True)
