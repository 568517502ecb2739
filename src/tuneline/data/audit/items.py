"""Records -> items (what the model reads and what it should produce), one row at a time.

The audit knows row shapes, not tasks: "labelled_text" (a text and its label), "chat" (a
conversation in one of the chat formats), and the preference shapes of data/preference.py:
"pairs" (a prompt, a chosen and a rejected answer: DPO, ORPO, SimPO), "judgements" (a prompt, an
answer and a true/false label: KTO) and "prompts" (a prompt for graders to score answers to: GRPO);
a task names its shape in `Task.data_shape`. A record that does not fit the shape becomes a
finding (invalid_rows, empty_text, format, empty_prompt, empty_side) instead.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

from ...errors import UserError
from ..chat import detect_format, to_messages, with_system
from ..columns import LABEL_COLUMNS, TEXT_COLUMNS, find_column, guess_columns, label_to_str
from ..io import Rows
from ..preference import OBJECTIVE_SHAPES, RowError, detect_preference_format, to_judgement, to_pair, to_prompt
from .findings import Findings

LABELLED_TEXT, CHAT = "labelled_text", "chat"
PAIRS, JUDGEMENTS, PROMPTS = "pairs", "judgements", "prompts"
PREFERENCE_SHAPES = (PAIRS, JUDGEMENTS, PROMPTS)
SHAPES = (LABELLED_TEXT, CHAT, *PREFERENCE_SHAPES)
INVALID = ("invalid_rows", "error", "lines that do not parse, or lack the fields the task needs")
FORMAT = ("format", "error", "conversation structure: roles, order, missing answers")
EMPTY_PROMPT = ("empty_prompt", "error", "rows whose prompt is empty or has no user turn: nothing to answer")
EMPTY_SIDE = {PAIRS: ("empty_side", "error", "pairs with an empty chosen or rejected answer: nothing to prefer"),
              JUDGEMENTS: ("empty_side", "error", "judgements with an empty completion: nothing to judge")}


@dataclass
class Item:
    """One usable row: what the model reads (input) and what it should produce (target)."""

    split: str
    file: str
    line: int
    input: str
    target: str
    messages: list | None = None
    context: str = ""            # preference shapes: the prompt's system text (part of the input's hash only)
    other: str | None = None     # pairs: the rejected answer (target: the chosen one)
    label: bool | None = None    # judgements: desirable (True) or not


_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().translate(_PUNCT).split())


class LabelledTextReader:
    def __init__(self, head: Rows, split: str, text_col: str | None, label_col: str | None):
        guess = guess_columns(head)
        self.tcol = find_column(head.columns, text_col, TEXT_COLUMNS, guess[0])
        self.lcol = find_column(head.columns, label_col, LABEL_COLUMNS, guess[1])
        if self.tcol is None or self.lcol is None:
            missing = "text" if self.tcol is None else "label"
            raise UserError(f"{head.path}: cannot tell which column is the {missing} (columns: {', '.join(head.columns)}); "
                            f"set data.{missing}_column in the recipe (tuneline data check: --{missing}-column)")
        self.split, self.path = split, head.path

    def item(self, rec: dict, line: int, out: Findings) -> Item | None:
        t, lab = rec.get(self.tcol), rec.get(self.lcol)
        if t is None or lab is None or isinstance(lab, (list, dict)) or not isinstance(t, str):
            what = self.tcol if (t is None or not isinstance(t, str)) else self.lcol
            out.get(*INVALID).add(self.path, line, reason=f"{what!r} missing or not a single value")
            return None
        if not t.strip() or (isinstance(lab, str) and not lab.strip()):
            out.get("empty_text", "error", "empty or whitespace-only inputs or labels").add(
                self.path, line, field=self.tcol if not t.strip() else self.lcol)
            return None
        return Item(self.split, self.path, line, t, label_to_str(lab))


class ChatReader:
    def __init__(self, head: Rows, split: str, fmt: str, cols: tuple[str, str], system_prompt: str | None = None):
        if fmt == "auto":
            fmt = detect_format(head, *(cols if cols[0] != "prompt" or cols[1] != "completion" else (None, None)))
        self.fmt, self.cols, self.split, self.path = fmt, cols, split, head.path
        self.system_prompt = system_prompt

    def item(self, rec: dict, line: int, out: Findings) -> Item | None:
        try:
            msgs = to_messages(rec, self.fmt, f"{self.path}:{line}", columns=self.cols)
        except UserError as e:
            reason = str(e).split(": ", 1)[-1]
            if "missing or empty" in reason:
                out.get("empty_text", "error", "empty or whitespace-only inputs or answers").add(self.path, line, reason=reason)
            elif "must be" in reason:
                out.get(*INVALID).add(self.path, line, reason=reason)
            else:
                out.get(*FORMAT).add(self.path, line, reason=reason)
            return None
        prompt = "\n".join(m["content"] for m in msgs[:-1] if m["role"] != "system")
        # training adds generate.system_prompt to rows without one: the length check must see it too
        return Item(self.split, self.path, line, prompt, msgs[-1]["content"], with_system(msgs, self.system_prompt))


class PreferenceReader:
    """pairs, judgements and prompts (data/preference.py) -> items, mirroring chat rows: the prompt's
    turns (system text apart, as `context`) are the input; the chosen answer, the completion or the
    reference the target; a pair's rejected answer `other`, a judgement's `label`. `messages` is the
    prompt and its answer (the length check swaps in a longer rejected answer)."""

    def __init__(self, shape: str, head: Rows, split: str, fmt: str, system_prompt: str | None = None):
        if fmt in (None, "auto"):
            fmt = detect_preference_format(head, shape)
        elif fmt not in OBJECTIVE_SHAPES[shape]:
            raise UserError(f"data.format: {fmt!r} is not a format of {shape}; allowed: "
                            f"{', '.join(OBJECTIVE_SHAPES[shape])} or auto")
        self.shape, self.fmt, self.split, self.path, self.system_prompt = shape, fmt, split, head.path, system_prompt

    def item(self, rec: dict, line: int, out: Findings) -> Item | None:
        where = f"{self.path}:{line}"
        try:
            if self.shape == PAIRS:
                row = to_pair(rec, where, self.fmt, self.system_prompt)
                answer, other, label = row.chosen, row.rejected, None
            elif self.shape == JUDGEMENTS:
                row = to_judgement(rec, where, self.system_prompt)
                answer, other, label = row.completion, None, row.label
            else:
                row = to_prompt(rec, where, self.system_prompt)
                answer, other, label = row.reference or "", None, None
        except RowError as e:
            found = {"format": FORMAT, "empty_prompt": EMPTY_PROMPT,
                     "empty_side": EMPTY_SIDE.get(self.shape, EMPTY_SIDE[PAIRS])}.get(e.kind, INVALID)
            out.get(*found).add(self.path, line, reason=str(e).removeprefix(f"{where}: "))
            return None
        turns = [m for m in row.prompt if m["role"] != "system"]
        context = "\n".join(m["content"] for m in row.prompt if m["role"] == "system")
        msgs = row.prompt + ([{"role": "assistant", "content": answer}] if self.shape != PROMPTS else [])
        return Item(self.split, self.path, line, "\n".join(m["content"] for m in turns), answer, msgs,
                    context=context, other=other, label=label)


def make_reader(shape: str, head: Rows, split: str, text_column: str | None, label_column: str | None,
                fmt: str, system_prompt: str | None = None):
    if shape == LABELLED_TEXT:
        return LabelledTextReader(head, split, text_column, label_column)
    if shape in PREFERENCE_SHAPES:
        return PreferenceReader(shape, head, split, fmt, system_prompt)
    cols = (text_column or "prompt", label_column or "completion")
    return ChatReader(head, split, fmt, cols, system_prompt)
