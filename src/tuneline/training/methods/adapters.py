"""PEFT adapters: LoRA (on a 4-bit base: QLoRA), DoRA, IA3 and prompt tuning. The base weights stay
frozen; a new task head is trained in full beside the adapter (PEFT modules_to_save) and saved with it."""

from __future__ import annotations

import peft
import torch.nn as nn

from ...errors import UserError
from . import get_method
from .layers import default_lora_targets, head_modules, train_modules


def apply_lora(model: nn.Module, recipe, task) -> nn.Module:
    return _lora(model, recipe, task, dora=False)


def apply_dora(model: nn.Module, recipe, task) -> nn.Module:
    return _lora(model, recipe, task, dora=True)


def _lora(model, recipe, task, *, dora: bool):
    o = recipe.lora
    cfg = peft.LoraConfig(
        task_type=_task_type(task), r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout,
        target_modules=o.target_modules or default_lora_targets(model),
        use_dora=dora, modules_to_save=head_modules(model, task) or None,
    )
    return _wrap(model, cfg, recipe)


def apply_ia3(model: nn.Module, recipe, task) -> nn.Module:
    o = recipe.ia3
    kwargs = {}
    if o.target_modules:
        kwargs["target_modules"] = o.target_modules
        kwargs["feedforward_modules"] = o.feedforward_modules or []
    cfg = peft.IA3Config(task_type=_task_type(task), modules_to_save=head_modules(model, task) or None, **kwargs)
    return _wrap(model, cfg, recipe)


def apply_prompt(model: nn.Module, recipe, task) -> nn.Module:
    heads = head_modules(model, task)
    cfg = peft.PromptTuningConfig(task_type=_task_type(task), num_virtual_tokens=recipe.prompt.num_virtual_tokens)
    wrapped = _wrap(model, cfg, recipe)
    train_modules(wrapped, heads)  # prompt tuning leaves a new task head frozen unless asked
    return wrapped


def _task_type(task):
    return peft.TaskType[task.peft_task_type] if task.peft_task_type else None


def _wrap(model, cfg, recipe):
    try:
        return peft.get_peft_model(model, cfg)
    except ValueError as e:
        raise UserError(f"{recipe.method}: cannot adapt this model: {e}") from None


def check_qlora(recipe, config) -> None:
    """LoRA's target check, after bitsandbytes and the sharding (quantized_base.check_quantizable)."""
    from ..quantized_base import check_quantizable

    check_quantizable(recipe, config)
    check_targets(recipe, config)


def check_targets(recipe, config) -> None:
    """Targets named in the recipe must exist: PEFT's own error names neither the key nor the choices."""
    method = get_method(recipe.method)
    targets, key = method.options(recipe).target_modules, f"{method.options_section}.target_modules"
    if not targets:
        return
    from accelerate import init_empty_weights
    from transformers import AutoModel

    with init_empty_weights():  # the module tree without allocating a single weight
        skeleton = AutoModel.from_config(config, trust_remote_code=recipe.trust_remote_code)
    names = [n for n, _ in skeleton.named_modules()]
    if any(n == t or n.endswith("." + t) for t in targets for n in names):
        return
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in skeleton.named_modules() if isinstance(m, nn.Linear)})
    raise UserError(f"{key}: {targets} match no layer of {recipe.model}; its linear layers are named "
                    f"{', '.join(linear[:12])}; leave {key} empty for the default")
