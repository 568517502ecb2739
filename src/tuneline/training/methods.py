"""How the model is adapted: full, freeze (head + top layers), or a PEFT adapter."""

from __future__ import annotations

import torch.nn as nn

from ..errors import UserError
from ..recipe import Recipe

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

PEFT_METHODS = ("lora", "dora", "ia3", "prompt")


def head_modules(model: nn.Module, task: str) -> list[str]:
    if task != "classify":
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


def apply_method(model: nn.Module, recipe: Recipe) -> nn.Module:
    method = recipe.method
    if recipe.memory.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (PEFT) and replays the dropout RNG exactly
        if hasattr(model, "activation_checkpointing_enable"):  # Transformers 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "freeze":
        return _freeze(model, recipe)
    return _peft(model, recipe)


def _freeze(model: nn.Module, recipe: Recipe) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    for name in head_modules(model, recipe.task):
        for mod_name, mod in model.named_modules():
            if mod_name == name or mod_name.endswith("." + name):
                for p in mod.parameters():
                    p.requires_grad_(True)
    n = recipe.freeze.train_layers
    blocks = find_blocks(model)
    if n > 0 and blocks is not None:
        for block in list(blocks)[-n:]:
            for p in block.parameters():
                p.requires_grad_(True)
    if recipe.task == "generate" and n > 0:
        # A decoder has no new head; train the final norm with the top blocks. The output layer
        # stays frozen: it is often tied to the input embeddings, which would then move too.
        for name, mod in model.named_modules():
            if name.count(".") <= 1 and name.rsplit(".", 1)[-1] in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
                for p in mod.parameters():
                    p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("freeze.train_layers: nothing left to train; set it to 1 or more")
    return model


def _peft(model: nn.Module, recipe: Recipe) -> nn.Module:
    import peft

    task_type = peft.TaskType.SEQ_CLS if recipe.task == "classify" else peft.TaskType.CAUSAL_LM
    heads = head_modules(model, recipe.task) or None
    method = recipe.method
    if method in ("lora", "dora"):
        o = recipe.lora
        cfg = peft.LoraConfig(
            task_type=task_type, r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout,
            target_modules=o.target_modules or default_lora_targets(model),
            use_dora=(method == "dora"), modules_to_save=heads,
        )
    elif method == "ia3":
        o = recipe.ia3
        kwargs = {}
        if o.target_modules:
            kwargs["target_modules"] = o.target_modules
            kwargs["feedforward_modules"] = o.feedforward_modules or []
        cfg = peft.IA3Config(task_type=task_type, modules_to_save=heads, **kwargs)
    elif method == "prompt":
        cfg = peft.PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=recipe.prompt.num_virtual_tokens,
        )
    else:  # pragma: no cover - the recipe schema forbids it
        raise UserError(f"method: unknown {method!r}")
    try:
        pm = peft.get_peft_model(model, cfg)
    except ValueError as e:
        raise UserError(f"{method}: cannot adapt this model: {e}") from None
    if method == "prompt" and heads:
        # Prompt tuning leaves the new classification head frozen unless asked.
        for name, p in pm.named_parameters():
            if any(f".{h}." in f".{name}" for h in heads):
                p.requires_grad_(True)
    return pm


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
