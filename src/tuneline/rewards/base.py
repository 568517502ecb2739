"""What every grader shares: its name and key path, its range, its pass rule, its error count."""

from __future__ import annotations

import math


class Grader:
    """One grader of a recipe. `raw` scores rows in the grader's own units (score_model: its
    `range`); `normalise` maps that onto 0..1; `passed` compares the raw score with
    `pass_threshold` (in the same units, as OpenAI does), or, without one, the normalised score
    with 0.5 (so a 0/1 grader passes exactly when it scores 1)."""

    def __init__(self, spec: dict, where: str, name: str, errors: dict[str, int]):
        self.spec, self.where, self.name = spec, where, name
        self.low, self.high = (float(x) for x in spec.get("range", (0, 1)))
        self.threshold = spec.get("pass_threshold")
        self._errors = errors

    def raw(self, items: list[dict], samples: list[dict]) -> list[float]:
        raise NotImplementedError

    def normalise(self, raw: float) -> float:
        if not math.isfinite(raw):
            return 0.0
        return min(1.0, max(0.0, (raw - self.low) / (self.high - self.low)))

    def passed(self, raw: float) -> bool:
        if self.threshold is not None:
            return math.isfinite(raw) and raw >= self.threshold
        return self.normalise(raw) >= 0.5

    def failed(self, n: int = 1) -> None:
        """Count rows this grader could not grade (scored 0): code that raised, a judge's answer
        without a score or label, a formula with no value."""
        self._errors[self.name] = self._errors.get(self.name, 0) + n
