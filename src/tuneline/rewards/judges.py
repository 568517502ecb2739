"""score_model and label_model: a local model reads rendered messages and judges the answer.

A chat judge answers greedily; its first number is the score (clamped into `range`), or the
label its answer names. A classify run (a reward model) reads the messages' contents joined by
blank lines: score_model's score is the probability of `label` (default: the run's last label),
label_model's label is the run's prediction. A chat answer without a number or a label scores
the bottom of the range and is counted in Graders.errors.
"""

from __future__ import annotations

import re

from .base import Grader
from .basic import first_number
from .errors import GraderError
from .templates import render

DEFAULT_NEW_TOKENS = 16  # a score or a label; sampling_params.max_completions_tokens overrides


def messages(spec: dict, where: str, item: dict, sample: dict) -> list[dict]:
    out = []
    for j, m in enumerate(spec["input"]):
        content = m["content"]["text"] if isinstance(m["content"], dict) else m["content"]
        role = "system" if m["role"] == "developer" else m["role"]  # chat templates know system, not developer
        out.append({"role": role, "content": render(content, item, sample, f"{where}.input[{j}].content")})
    return out


def joined(conversation: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in conversation)


def parse_label(answer: str, labels: list[str]) -> str | None:
    """The label a judge's answer names: the whole answer (case and surrounding punctuation
    ignored), else the label that appears first as a whole word (the longer one on a tie)."""
    bare = answer.strip().strip("\"'`.*:!").strip().lower()
    for label in labels:
        if bare == label.lower():
            return label
    best = None
    for label in labels:
        m = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", answer, re.IGNORECASE)
        if m and (best is None or (m.start(), -len(label)) < (best[0], -len(best[1]))):
            best = (m.start(), label)
    return best[1] if best else None


class _Judged(Grader):
    def __init__(self, spec, where, name, errors, models):
        super().__init__(spec, where, name, errors)
        self.judge = models.judge(spec["model"], f"{where}.model")
        self.max_new = spec.get("sampling_params", {}).get("max_completions_tokens", DEFAULT_NEW_TOKENS)

    def conversations(self, items, samples) -> list[list[dict]]:
        return [messages(self.spec, self.where, it, s) for it, s in zip(items, samples)]


class ScoreModel(_Judged):
    def __init__(self, spec, where, name, errors, models):
        super().__init__(spec, where, name, errors, models)
        if self.judge.kind == "classify":
            self.label = spec.get("label", self.judge.labels[-1])
            if self.label not in self.judge.labels:
                raise GraderError(f"{where}.label: {self.label!r} is not a label of {spec['model']}; "
                                  f"allowed: {', '.join(self.judge.labels)}")
        elif "label" in spec:
            raise GraderError(f"{where}.label: only a classify run (a reward model) uses `label`; "
                              f"{spec['model']} is a chat model")

    def from_answer(self, answer: str) -> float:
        number = first_number(answer)
        if number is None:
            self.failed()
            return self.low
        return min(self.high, max(self.low, number))

    def raw(self, items, samples):
        convs = self.conversations(items, samples)
        if self.judge.kind == "classify":
            probs = self.judge.probabilities([joined(c) for c in convs])
            return [self.low + p[self.label] * (self.high - self.low) for p in probs]
        return [self.from_answer(a) for a in self.judge.answers(convs, self.max_new)]


class LabelModel(_Judged):
    def __init__(self, spec, where, name, errors, models):
        super().__init__(spec, where, name, errors, models)
        self.passing = set(spec["passing_labels"])
        if self.judge.kind == "classify":
            missing = [x for x in spec["passing_labels"] if x not in self.judge.labels]
            if missing:
                raise GraderError(f"{where}.passing_labels: {missing[0]!r} is not a label {spec['model']} predicts; "
                                  f"its labels: {', '.join(self.judge.labels)}")

    def from_answer(self, answer: str) -> float:
        label = parse_label(answer, self.spec["labels"])
        if label is None:
            self.failed()
        return float(label in self.passing)

    def raw(self, items, samples):
        convs = self.conversations(items, samples)
        if self.judge.kind == "classify":
            probs = self.judge.probabilities([joined(c) for c in convs])
            return [float(max(p, key=p.get) in self.passing) for p in probs]
        return [self.from_answer(a) for a in self.judge.answers(convs, self.max_new)]
