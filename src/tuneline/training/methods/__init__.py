"""Methods: how a model is adapted for training (full, freeze, LoRA, QLoRA, DoRA, IA3, prompt tuning).

`METHODS` maps a recipe's `method:` value to its `Method` record. Everything that differs by
method is a field of the record; no code elsewhere compares a method's name. This module is
light (the recipe validates `method:` and takes its default learning rate from here): functions
that need PyTorch or PEFT are given as import paths, "module:function", loaded on first use.
A plug-in method registers its record (tests/test_train_methods.py has one):

    register_method(Method("bias", default_lr=1e-3, apply=train_biases))

Fields:
  name               the recipe's `method:` value
  default_lr         train.lr when the recipe sets none
  apply              (model, recipe, task) -> model: marks what trains, or wraps the model
  options_section    the recipe section of its options (lora and dora share `lora:`), or None
  adapter            a PEFT adapter: saved in adapter/, and checkpoints hold only the adapter
  mergeable          model/ holds the whole trained model (an adapter merged into the weights);
                     False: adapter/ alone is the model (prompt tuning's virtual tokens cannot be folded in)
  check              (recipe, model_config) -> None: a preflight check, raises UserError before anything is written
  quantize           (model, recipe) -> model: stores the frozen base in fewer bits before `apply` (QLoRA);
                     the finish dequantizes it before the merge (training/quantized_base.py)
  checkpoint_share   disk of the best + last checkpoints, in multiples of the base weights' size (preflight)
  activation_blocks  (recipe, layers) -> transformer blocks whose activations the backward pass keeps; None: all
  overfit_tip        (recipe) -> the change against overfitting this method offers, or None
  memory_row         a row of the memory table of `tuneline models info`
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

from ...errors import UserError

if TYPE_CHECKING:
    from ...recipe import Recipe

Hook = Union[Callable, str]  # a function, or "module:function" imported on first use


@dataclass(frozen=True)
class Method:
    name: str
    default_lr: float
    apply: Hook
    options_section: str | None = None
    adapter: bool = False
    mergeable: bool = True
    check: Hook | None = None
    quantize: Hook | None = None
    checkpoint_share: float = 4.0  # weights + two Adam moments (last) + weights (best): every weight trained
    activation_blocks: Callable[[Recipe, int], int] | None = None
    overfit_tip: Callable[[Recipe], str | None] | None = None
    memory_row: bool = False

    def options(self, recipe: Recipe):
        """The method's own recipe section (a pydantic model), or None."""
        return getattr(recipe, self.options_section) if self.options_section else None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add (or replace) a method. A new options section: tuneline.recipe.add_section."""
    if not method.name:
        raise ValueError("a method needs a name")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    method = METHODS.get(name)
    if method is None:
        raise UserError(f"method: unknown {name!r}; allowed: {', '.join(METHODS)}")
    return method


def _load(hook: Hook) -> Callable:
    if isinstance(hook, str):
        module, attr = hook.split(":")
        return getattr(importlib.import_module(module), attr)
    return hook


def apply_method(model, recipe: Recipe, task, quantize: bool = True):
    """Prepare `model` for training by the recipe's method; `task` is a tuneline.tasks.Task.
    quantize=False skips the method's `quantize` (a model on the meta device, for sizes only)."""
    from ... import hardware

    method = get_method(recipe.method)
    if quantize:
        model = base_as_trained(model, recipe)

    if recipe.memory.may_checkpoint(hardware.device_type()):
        # on every block; the loop then leaves checkpointed only as many as the recipe asks or
        # its memory needs (training/checkpointing.py).
        # Non-reentrant: works with frozen inputs (PEFT) and replays the dropout RNG exactly
        if hasattr(model, "activation_checkpointing_enable"):  # Transformers 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return _load(method.apply)(model, recipe, task)


def base_as_trained(model, recipe: Recipe):
    """The loaded base model as the recipe's adapter trained on it: through the method's `quantize`
    (a 4-bit base for qlora), unchanged otherwise. What adapter/ is to be loaded onto."""
    method = get_method(recipe.method)
    return _load(method.quantize)(model, recipe) if method.quantize is not None else model


def check_method(recipe: Recipe, config) -> None:
    """The method's preflight check against the model's config (no weights loaded)."""
    method = get_method(recipe.method)
    if method.check is not None:
        _load(method.check)(recipe, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) weights; a 4-bit weight counts as one, not as half its packed byte."""
    from ..quantized_base import full_numel

    trainable = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(full_numel(p) for p in model.parameters())
    return trainable, total


# -- the built-in methods ------------------------------------------------------------------------
# Default learning rates: adapters need far larger steps than full tuning; one default for all
# would leave LoRA or prompt tuning barely moving. Values as in the PEFT examples.

def _smaller_rank(recipe: Recipe) -> str | None:
    r = recipe.lora.r
    return f"a smaller LoRA rank (lora.r: {r // 2})" if r > 2 else None


_PLAIN, _ADAPTERS = "tuneline.training.methods.plain", "tuneline.training.methods.adapters"
_QUANT = "tuneline.training.quantized_base"

register_method(Method("full", default_lr=5e-5, apply=f"{_PLAIN}:train_all", memory_row=True,
                       overfit_tip=lambda recipe: "fewer trained weights (method: lora)"))
register_method(Method("lora", default_lr=5e-4, apply=f"{_ADAPTERS}:apply_lora", options_section="lora",
                       adapter=True, check=f"{_ADAPTERS}:check_targets", checkpoint_share=0,
                       overfit_tip=_smaller_rank, memory_row=True))
register_method(Method("qlora", default_lr=5e-4, apply=f"{_ADAPTERS}:apply_lora", options_section="lora",
                       adapter=True, check=f"{_ADAPTERS}:check_qlora", quantize=f"{_QUANT}:quantize_base",
                       checkpoint_share=0, overfit_tip=_smaller_rank, memory_row=True))
register_method(Method("freeze", default_lr=1e-4, apply=f"{_PLAIN}:freeze", options_section="freeze",
                       checkpoint_share=2, memory_row=True,  # checkpoints: the head and top blocks only
                       activation_blocks=lambda recipe, layers: min(recipe.freeze.train_layers, layers)))
register_method(Method("dora", default_lr=5e-4, apply=f"{_ADAPTERS}:apply_dora", options_section="lora",
                       adapter=True, check=f"{_ADAPTERS}:check_targets", checkpoint_share=0,
                       overfit_tip=_smaller_rank))
register_method(Method("ia3", default_lr=3e-3, apply=f"{_ADAPTERS}:apply_ia3", options_section="ia3",
                       adapter=True, check=f"{_ADAPTERS}:check_targets", checkpoint_share=0))
register_method(Method("prompt", default_lr=3e-2, apply=f"{_ADAPTERS}:apply_prompt", options_section="prompt",
                       adapter=True, mergeable=False, checkpoint_share=0))

__all__ = ["METHODS", "Method", "apply_method", "check_method", "count_parameters", "get_method", "register_method"]
