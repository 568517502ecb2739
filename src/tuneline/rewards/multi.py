"""The multi grader: named graders combined by the formula in `calculate_output`.

The names in the formula stand for the graders' raw scores (a score_model's in its own range),
as in OpenAI's multi grader; the formula's value is then normalised by the multi grader's own
`range` (tuneline's addition, default [0, 1]) and clamped.
"""

from __future__ import annotations

import math

from .base import Grader
from .formula import Formula


class Multi(Grader):
    def __init__(self, spec, where, name, errors, children: dict[str, Grader]):
        super().__init__(spec, where, name, errors)
        self.children = children
        self.formula = Formula(spec["calculate_output"], list(children), f"{where}.calculate_output")

    def one(self, scores: dict[str, float]) -> float:
        try:
            value = self.formula.value(scores)
        except (ArithmeticError, ValueError):  # division by zero, log(0), overflow: no value for this row
            value = math.nan
        if not math.isfinite(value):
            self.failed()
            return self.low
        return value

    def raw(self, items, samples):
        by_child = {key: child.raw(items, samples) for key, child in self.children.items()}  # batched per child
        return [self.one({key: by_child[key][i] for key in by_child}) for i in range(len(items))]
