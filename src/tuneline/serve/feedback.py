"""What the service collected, read for retraining: corrections (a classifier's corrected label,
a chat's corrected answer) and, for chat runs, answers rated up or down; which objective a
challenger learns by (`retrain.objective`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from ..data.preference import Example
from ..errors import UserError
from ..tasks.base import Task
from .store import Store

OBJECTIVES = ("auto", "sft", "kto", "dpo")
KINDS = ("corrections", "thumbs_up", "thumbs_down")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def corrections(store: Store, task: Task) -> tuple[list[dict], int]:
    """Corrected feedback as the task's plain rows, the latest per input; and how many corrections
    could not be used because their input was not stored."""
    latest: dict[str, dict] = {}
    hidden = 0
    for fb in reversed(store.feedback_rows()):  # oldest first: later feedback overwrites
        fix = task.correction(fb)
        if not fix:
            continue
        if fb["input"] is None:
            hidden += 1
            continue
        record = task.feedback_record(_conversation(fb), fix)
        latest[_norm(task.plain_input(record))] = record
    return list(latest.values()), hidden


def _conversation(fb: dict) -> list[dict]:
    """The conversation a feedback row's request carried: a chat's messages, else its text (the
    input the feedback names) as one user turn."""
    inputs = json.loads(fb["input"])
    if fb["endpoint"] == "/v1/chat/completions":
        return inputs
    return [{"role": "user", "content": inputs[fb["item"]] if fb["item"] < len(inputs) else inputs[0]}]


def _model_answer(fb: dict) -> str | None:
    """What the model answered to the input a feedback row names (None: no answer was stored)."""
    outputs = json.loads(fb["output"]) if fb["output"] else None
    if not isinstance(outputs, list) or not outputs:
        return None
    out = outputs[fb["item"]] if fb["item"] < len(outputs) else outputs[0]
    return out if isinstance(out, str) and out.strip() else None


# -- a chat run's feedback --------------------------------------------------------------------

@dataclass
class Judged:
    """One feedback row of a chat run: an answer rated up or down, or a correction of it."""
    prompt: list[dict]          # the request's conversation, ending with the user turn
    answer: str | None          # what the model said (None: not stored)
    kind: str                   # "corrections" | "thumbs_up" | "thumbs_down"
    correction: str | None = None
    created: float = 0.0

    def example(self) -> Example:
        """As what a challenger learns: the preferred and / or the dispreferred answer."""
        if self.kind == "thumbs_up":
            return Example(self.prompt, self.answer, None)
        if self.kind == "thumbs_down":
            return Example(self.prompt, None, self.answer)
        differs = self.answer is not None and _norm(self.answer) != _norm(self.correction)
        return Example(self.prompt, self.correction, self.answer if differs else None)


@dataclass
class ChatFeedback:
    """A chat run's usable feedback: corrections (the latest per conversation), thumbs up and down
    without a correction (the latest per conversation and answer); what could not be used."""
    corrections: list[Judged] = field(default_factory=list)
    thumbs_up: list[Judged] = field(default_factory=list)
    thumbs_down: list[Judged] = field(default_factory=list)
    hidden: Counter = field(default_factory=Counter)   # kind -> rows about requests stored without inputs
    no_answer: int = 0                                 # thumbs on a request whose answer was not stored
    unusable: int = 0                                  # conversations training rows cannot hold (two user turns in a row)

    def counts(self) -> dict:
        return {k: len(getattr(self, k)) for k in KINDS}

    def usable(self, objective: str) -> int:
        """Feedback rows the objective learns from."""
        if objective == "kto":
            return sum(self.counts().values())
        if objective == "dpo":
            return sum(1 for j in self.corrections if j.example().rejected is not None)
        return len(self.corrections)


def _trainable(prompt: list[dict]) -> bool:
    """The chat API accepts any order of turns; a training row needs system?, then user and assistant
    in turn, ending with the user turn being answered (data.chat.check_order)."""
    from ..data.chat import check_order

    try:
        check_order(prompt, "feedback", need_answer=False)
    except UserError:
        return False
    return bool(prompt) and prompt[-1]["role"] == "user"


def chat_feedback(rows: list[dict]) -> ChatFeedback:
    """A chat run's feedback rows (`Store.feedback_rows()`, newest first) -> ChatFeedback. A row
    with a corrected answer is a correction whatever its rating; a thumbs up or down on the exact
    answer a correction replaces gives way to the correction."""
    fixes: dict[str, Judged] = {}
    judged: dict[tuple[str, str], Judged] = {}
    out = ChatFeedback()
    for fb in reversed(rows):  # oldest first: later feedback overwrites
        fix = fb.get("corrected_answer")
        kind = "corrections" if fix else {"up": "thumbs_up", "down": "thumbs_down"}.get(fb.get("rating"))
        if kind is None:
            continue
        if fb["input"] is None:
            out.hidden[kind] += 1
            continue
        prompt = _conversation(fb)
        if not _trainable(prompt):
            out.unusable += 1
            continue
        answer = _model_answer(fb)
        key = _norm(json.dumps(prompt))
        if fix:  # (a key keeps its first place: the order, and so the seeded split, is corrections()'s)
            fixes[key] = Judged(prompt, answer, kind, fix, fb["created"])
        elif answer is None:
            out.no_answer += 1
        else:
            judged[(key, _norm(answer))] = Judged(prompt, answer, kind, None, fb["created"])
    replaced = {(k, _norm(j.answer)) for k, j in fixes.items() if j.answer is not None}
    out.corrections = list(fixes.values())
    for k, j in judged.items():
        if k not in replaced:
            getattr(out, j.kind).append(j)
    return out


def pick_objective(requested: str, task: Task, fb: ChatFeedback | None) -> tuple[str, str]:
    """(objective the challenger learns by, why) for `retrain.objective` = requested."""
    if requested not in OBJECTIVES:
        raise UserError(f"retrain.objective: {requested!r} is not one; allowed: {', '.join(OBJECTIVES)}")
    if "chat" not in task.serves:
        if requested not in ("auto", "sft"):
            raise UserError(f"retrain.objective: {requested} learns from a chat run's answers; a {task.name} run "
                            "retrains with sft (its corrections): use auto or sft")
        return "sft", "a classifier learns from corrected labels"
    if requested != "auto":
        return requested, "retrain.objective"
    if fb is not None and (fb.thumbs_up or fb.thumbs_down):
        return "kto", "auto: answers were rated up or down, which kto learns from"
    return "sft", "auto: no answer was rated up or down, so the corrections are learned as supervised rows"
