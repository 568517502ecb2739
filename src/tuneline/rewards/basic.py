"""The graders that need no model: string_check, text_similarity, regex, json, number."""

from __future__ import annotations

import json
import re
from typing import ClassVar

from .base import Grader
from .errors import GraderError
from .similarity import METRICS, meteor_available
from .spec import json_validator, regex_flags
from .templates import render

OUTPUT = "{{sample.output_text}}"  # tuneline's own types grade the answer unless `input` says otherwise


def _text(value) -> str:
    return value if isinstance(value, str) else str(value)


class _Templated(Grader):
    def pairs(self, items, samples) -> list[tuple[str, str]]:
        """(input, reference) of every row, rendered."""
        inp, ref = self.spec.get("input", OUTPUT), _text(self.spec.get("reference", ""))
        return [(render(inp, it, s, f"{self.where}.input"), render(ref, it, s, f"{self.where}.reference"))
                for it, s in zip(items, samples)]


class StringCheck(_Templated):
    OPS: ClassVar[dict] = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "like": lambda a, b: b in a,
           "ilike": lambda a, b: b.lower() in a.lower()}

    def raw(self, items, samples):
        op = self.OPS[self.spec["operation"]]
        return [float(op(a, b)) for a, b in self.pairs(items, samples)]


class TextSimilarity(_Templated):
    def __init__(self, spec, where, name, errors, models):
        super().__init__(spec, where, name, errors)
        metric = spec["evaluation_metric"]
        if metric == "meteor" and not meteor_available():
            raise GraderError(f"{where}.evaluation_metric: meteor needs NLTK's WordNet data, which is not installed "
                              f"and cannot be downloaded offline (on a machine with a network: python -m nltk.downloader "
                              f"wordnet); use bleu, gleu, rouge_l or fuzzy_match instead")
        self.encoder = models.encoder(spec["model"], f"{where}.model") if metric == "cosine" else None
        self.metric = METRICS.get(metric)

    def raw(self, items, samples):
        pairs = self.pairs(items, samples)
        if self.encoder is None:
            return [float(self.metric(a, b)) for a, b in pairs]
        emb = self.encoder.embed([a for a, _ in pairs] + [b for _, b in pairs])
        n = len(pairs)
        return [float(x) for x in (emb[:n] * emb[n:]).sum(-1)]  # negative cosines clamp to 0


class Regex(_Templated):
    def __init__(self, spec, where, name, errors):
        super().__init__(spec, where, name, errors)
        self.pattern = re.compile(spec["pattern"], regex_flags(spec.get("flags", "")))

    def raw(self, items, samples):
        return [float(self.pattern.search(a) is not None) for a, _ in self.pairs(items, samples)]


class Json(_Templated):
    def __init__(self, spec, where, name, errors):
        super().__init__(spec, where, name, errors)
        self.validator = json_validator(spec["schema"], f"{where}.schema") if "schema" in spec else None

    def one(self, text: str) -> float:
        try:
            obj = json.loads(text)  # strict: a format reward should not accept fences or prose around JSON
        except ValueError:
            return 0.0
        return float(self.validator is None or self.validator.is_valid(obj))

    def raw(self, items, samples):
        return [self.one(a) for a, _ in self.pairs(items, samples)]


# 1,234.5 / -3 / .5 / 2e-3: thousands separators only in groups of three
NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def first_number(text: str) -> float | None:
    m = NUMBER.search(text)
    return float(m.group(0).replace(",", "")) if m else None


class Number(_Templated):
    def raw(self, items, samples):
        tol, rel = float(self.spec.get("tolerance", 0)), float(self.spec.get("relative", 0))
        out = []
        for a, b in self.pairs(items, samples):
            ref = first_number(b)
            if ref is None:
                raise GraderError(f"{self.where}.reference: {b!r} holds no number")
            got = first_number(a)
            out.append(float(got is not None and abs(got - ref) <= max(tol, rel * abs(ref))))
        return out
