"""The search space: recipe keys checked against the recipe schema, sampled through an Optuna
trial, and set into a copy of the base recipe."""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ..errors import UserError
from ..recipe import Recipe, SearchParam, recipe_from_dict
from ..training.methods import get_method


@dataclass(frozen=True)
class Dimension:
    key: str               # dotted recipe key, e.g. "train.lr"
    kind: str              # "int" | "float" | "choice"
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()

    def sample(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key}: one of {list(self.choices)}"
        scale = ", log scale" if self.log else (f", step {self.step}" if self.step else "")
        return f"{self.key}: {self.kind} {self.low} .. {self.high}{scale}"


def _field_type(key: str) -> Any:
    """The annotation of a dotted recipe key, or a UserError that lists the keys allowed there."""
    model: type[BaseModel] = Recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {k: f for k, f in model.model_fields.items() if k != "search"}
        if part not in fields:
            where = ".".join(parts[:i]) or "the top level"
            raise UserError(f"search.space.{key}: {part!r} is not a recipe key; keys at {where}: {', '.join(fields)}")
        ann = fields[part].annotation
        inner = _unwrap_model(ann)
        if i == len(parts) - 1:
            if inner is not None:
                raise UserError(f"search.space.{key}: {key} is a section; search one of its keys "
                                f"({', '.join(f'{key}.{k}' for k in inner.model_fields)})")
            return ann
        if inner is None:
            raise UserError(f"search.space.{key}: {'.'.join(parts[:i + 1])} has no sub-keys")
        model = inner
    raise AssertionError("unreachable")


def _unwrap_model(ann) -> type[BaseModel] | None:
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _numeric_kind(ann) -> str | None:
    """int / float for numeric recipe fields (Optional allowed), else None."""
    types = {a for a in (ann, *typing.get_args(ann)) if a is not type(None)}
    if float in types:
        return "float"
    if int in types and bool not in types:
        return "int"
    return None


def set_key(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}  # an optional section that was null (e.g. train.early_stopping)
        node = node[part]
    node[parts[-1]] = value


def build_space(recipe: Recipe) -> list[Dimension]:
    """Check every searched key against the recipe schema and turn it into a Dimension.
    Each bound and choice is validated as a recipe value now, not in the middle of a study."""
    if recipe.search is None:
        raise UserError("the recipe has no `search:` section; add one, e.g.\n"
                        "search:\n  space:\n    train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}\n"
                        "    train.batch_size: {choices: [16, 32]}")
    dims = []
    for key, p in recipe.search.space.items():
        dims.append(_dimension(key, p, _field_type(key)))
    base = base_dict(recipe)
    for d in dims:
        for value in (d.choices if d.kind == "choice" else (d.low, d.high)):
            trial_data = copy.deepcopy(base)
            set_key(trial_data, d.key, value)
            try:
                recipe_from_dict(trial_data, source=f"search.space.{d.key}")
            except UserError as e:
                raise UserError(f"search.space.{d.key}: the value {value!r} is not valid there:\n{e}") from None
    return dims


def _dimension(key: str, p: SearchParam, ann) -> Dimension:
    if p.choices is not None:
        bad = [c for c in p.choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise UserError(f"search.space.{key}: choices must be plain values (numbers, strings, true/false, null); "
                            f"got {bad[0]!r}")
        return Dimension(key, "choice", choices=tuple(p.choices))
    kind = _numeric_kind(ann)
    if kind is None:
        raise UserError(f"search.space.{key}: {key} is not a number; give choices: [...] instead of a range")
    # Learning rates matter by orders of magnitude: log scale unless the recipe says otherwise.
    log = p.log if p.log is not None else key.rsplit(".", 1)[-1] in ("lr", "learning_rate")
    if kind == "int":
        vals = [p.low, p.high] + ([p.step] if p.step is not None else [])
        if any(float(v) != int(v) for v in vals):
            raise UserError(f"search.space.{key}: {key} is a whole number; low, high and step must be too")
        return Dimension(key, "int", int(p.low), int(p.high), log, int(p.step) if p.step else None)
    return Dimension(key, "float", float(p.low), float(p.high), log, float(p.step) if p.step else None)


def base_dict(recipe: Recipe) -> dict:
    """The recipe as plain data, without its search section: what every trial starts from."""
    data = recipe.model_dump(mode="json")
    data.pop("search", None)
    return data


def trial_recipe(base: dict, values: dict[str, Any]) -> Recipe:
    data = copy.deepcopy(base)
    if "method" in values and "train.lr" not in values and data["train"]["lr"] == get_method(data["method"]).default_lr:
        data["train"]["lr"] = None  # the base only had its method's default lr: each method gets its own
    for key, value in values.items():
        set_key(data, key, value)
    return recipe_from_dict(data, source="trial recipe")
