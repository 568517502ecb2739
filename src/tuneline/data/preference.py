"""Preference and reward rows: pairs (DPO / ORPO / SimPO), judgements (KTO), prompts (GRPO).

Formats (`PREFERENCE_FORMATS`):
  pairs              TRL: {"prompt", "chosen", "rejected"}, each text or chat messages (prompt: turns ending
                     with a user turn; chosen/rejected: one assistant message, or the prompt's turns then
                     the answer). Without "prompt": chosen and rejected are whole conversations that share
                     every turn but the final assistant answer (TRL's implicit prompt).
  openai_preference  OpenAI's DPO files: {"input": {"messages", "tools"?}, "preferred_output": [assistant],
                     "non_preferred_output": [assistant]}.
  judgements         TRL's unpaired preferences (KTO): {"prompt", "completion", "label": true | false}.
  prompts            GRPO / reinforcement fine-tuning: {"messages": [... user]} or {"prompt": ...}, plus any
                     fields the graders read ({{item.FIELD}}); a final assistant turn is the reference.

Each reader turns one record into a dataclass or raises one `RowError` (a UserError) that names
file:line, the key and the fix. Identical chosen/rejected answers, contradicting rows and label
balance are not row errors: the data audit reports them (`data/audit/`). Message content may be
text or a list of text parts ({"type": "text", "text": ...}), joined as chat templates render
them; the "developer" role is read as "system".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .chat import check_order, with_system
from .io import Rows

PREFERENCE_FORMATS = ("pairs", "openai_preference", "judgements", "prompts")
OBJECTIVE_SHAPES = {"pairs": ("pairs", "openai_preference"), "judgements": ("judgements",), "prompts": ("prompts",)}
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_PARTS = ("text", "input_text", "output_text")

EXAMPLES = {
    "pairs": '{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}  (TRL; each may be chat messages, '
             'or chosen/rejected whole conversations without "prompt")',
    "openai_preference": '{"input": {"messages": [{"role": "user", "content": "What is 2+2?"}]}, "preferred_output": '
                         '[{"role": "assistant", "content": "4"}], "non_preferred_output": [{"role": "assistant", '
                         '"content": "5"}]}  (OpenAI DPO)',
    "judgements": '{"prompt": "What is 2+2?", "completion": "4", "label": true}  (KTO; false = an undesirable answer)',
    "prompts": '{"messages": [{"role": "user", "content": "What is 2+2?"}], "answer": "4"}  or  {"prompt": '
               '"What is 2+2?", "answer": "4"}  (GRPO; other fields are for the graders)',
}
_USED_BY = {"pairs": "DPO / ORPO / SimPO", "judgements": "KTO", "prompts": "GRPO"}


class RowError(UserError):
    """One bad row. `kind` is how the data audit files it: "invalid" (a key missing or of the wrong
    type), "format" (turn roles or order), "empty_prompt" or "empty_side" (an empty answer)."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


@dataclass
class Example:
    """What a row teaches, whatever its format: a prompt with a preferred answer, a dispreferred
    one, or both (a pair). Retraining turns original rows and feedback into these."""
    prompt: list[dict]
    chosen: str | None = None
    rejected: str | None = None


@dataclass
class Pair:
    """DPO / ORPO / SimPO: one prompt, a preferred and a dispreferred answer."""

    prompt: list[dict]      # chat messages ending with a user turn (system prompt included if given)
    chosen: str             # the preferred assistant answer
    rejected: str           # the other one
    tools: list | None = None  # OpenAI's input.tools, for templates that render tool definitions


@dataclass
class Judgement:
    """KTO: one prompt, one answer, desirable or not."""

    prompt: list[dict]
    completion: str
    label: bool             # True = desirable


@dataclass
class PromptRow:
    """GRPO: a prompt to sample answers for, and the record the graders read."""

    prompt: list[dict]      # messages ending with a user turn
    item: dict              # the whole record, for graders' {{item.FIELD}} templates
    reference: str | None   # a final assistant message if the row had one (kept for evaluation), else None


# -- which format ---------------------------------------------------------------

def detect_preference_format(rows: Rows, objective_shape: str) -> str:
    """The format of `rows` (their first rows' keys) for an objective's shape: "pairs" (DPO, ORPO,
    SimPO) -> pairs or openai_preference; "judgements" (KTO) -> judgements; "prompts" (GRPO) -> prompts."""
    if objective_shape not in OBJECTIVE_SHAPES:
        raise ValueError(f"objective_shape must be one of {', '.join(OBJECTIVE_SHAPES)}, not {objective_shape!r}")
    cols = _columns(rows)
    path = getattr(rows, "path", "data")
    if objective_shape == "pairs":
        if cols & {"preferred_output", "non_preferred_output"}:
            return "openai_preference"
        if cols & {"chosen", "rejected"}:
            return "pairs"
    elif objective_shape == "judgements":
        if {"completion", "label"} <= cols:
            return "judgements"
    elif cols & {"messages", "prompt"}:
        return "prompts"
    accepted = "; ".join(f"{fmt}: {EXAMPLES[fmt]}" for fmt in OBJECTIVE_SHAPES[objective_shape])
    raise UserError(f"{path}: cannot read these rows as {objective_shape} for {_USED_BY[objective_shape]} "
                    f"(columns: {', '.join(sorted(cols)) or 'none'}){_looks_like(cols, objective_shape)}. "
                    f"Accepted: {accepted}")


def _columns(rows) -> set[str]:
    if isinstance(rows, Rows):
        return set(rows.columns) or {k for rec in rows.records for k in rec}
    cols: set[str] = set()
    for i, rec in enumerate(rows):
        if i >= 2000:
            break
        cols.update(rec)
    return cols


def _looks_like(cols: set[str], wanted: str) -> str:
    """A hint when the rows fit another objective's shape."""
    if wanted != "pairs" and cols & {"chosen", "rejected", "preferred_output"}:
        hint = "they hold pairs (chosen / rejected): train with dpo, orpo or simpo"
        if wanted == "judgements":
            hint += ", or write each pair as two rows: the chosen answer with label true, the rejected with false"
        return f"; {hint}"
    if wanted != "judgements" and {"completion", "label"} <= cols:
        return "; they hold judgements (prompt, completion, label): train with kto"
    if wanted != "prompts" and "messages" in cols:
        return "; they hold chats (messages): for preferences give two answers per prompt, or train with sft"
    return ""


# -- one row ------------------------------------------------------------------------

def to_pair(rec: dict, where: str, fmt: str, system_prompt: str | None = None) -> Pair:
    """A pairs or openai_preference record -> Pair; a RowError naming `where` (file:line) and the key."""
    if fmt == "openai_preference":
        inp = _required(rec, "input", where, "the prompt as {\"messages\": [...]}")
        if not isinstance(inp, dict):
            raise RowError(f"{where}: 'input' must be an object with 'messages' (the prompt's turns), "
                           f"got {_json_type(inp)}")
        if inp.get("messages") is None:
            raise RowError(f"{where}: 'input.messages' is missing; give the prompt's turns, ending with a user turn")
        prompt = _prompt(inp["messages"], where, "input.messages", text_ok=False)
        chosen = _answer(_required(rec, "preferred_output", where, "the preferred answer as "
                                   "[{\"role\": \"assistant\", \"content\": ...}]"), where, "preferred_output", prompt)
        rejected = _answer(_required(rec, "non_preferred_output", where, "the other answer as "
                                     "[{\"role\": \"assistant\", \"content\": ...}]"), where, "non_preferred_output", prompt)
        tools = inp.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise RowError(f"{where}: 'input.tools' must be a list of tool definitions, got {_json_type(tools)}")
        return Pair(with_system(prompt, system_prompt), chosen, rejected, tools or None)
    if fmt != "pairs":
        raise UserError(f"data.format: {fmt!r} is not a format of pairs; allowed: pairs, openai_preference (or auto)")
    for key in ("chosen", "rejected"):
        _required(rec, key, where, "a pair needs 'chosen' (the preferred answer) and 'rejected' (the other one)")
    if rec.get("prompt") is not None:
        prompt = _prompt(rec["prompt"], where, "prompt")
        chosen = _answer(rec["chosen"], where, "chosen", prompt)
        rejected = _answer(rec["rejected"], where, "rejected", prompt)
    else:
        prompt, chosen, rejected = _implicit_prompt(rec, where)
    return Pair(with_system(prompt, system_prompt), chosen, rejected)


def to_judgement(rec: dict, where: str, system_prompt: str | None = None) -> Judgement:
    """A judgements record -> Judgement; a RowError naming `where` (file:line) and the key."""
    _required(rec, "prompt", where, "the question the completion answers")
    _required(rec, "completion", where, "the answer being judged")
    label = _required(rec, "label", where, "true for a desirable answer, false for an undesirable one")
    if not isinstance(label, bool):
        raise RowError(f"{where}: 'label' must be true or false (a JSON boolean), got {label!r}; write true for a "
                       "desirable answer, false for an undesirable one")
    prompt = _prompt(rec["prompt"], where, "prompt")
    completion = _answer(rec["completion"], where, "completion", prompt)
    return Judgement(with_system(prompt, system_prompt), completion, label)


def to_prompt(rec: dict, where: str, system_prompt: str | None = None) -> PromptRow:
    """A prompts record -> PromptRow (a final assistant turn becomes the reference); a RowError naming
    `where` (file:line) and the key."""
    key = "messages" if rec.get("messages") is not None else "prompt"
    if rec.get(key) is None:
        raise RowError(f"{where}: neither 'messages' nor 'prompt' is given; a GRPO row needs the prompt to sample "
                       "answers for, e.g. {\"messages\": [{\"role\": \"user\", \"content\": ...}], ...fields the "
                       "graders read}")
    value = rec[key]
    reference = None
    if isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
        msgs = _messages(value, where, key)
        if msgs[-1]["role"] == "assistant":
            answer, msgs = msgs[-1]["content"], msgs[:-1]
            reference = answer if answer.strip() else None
            if not msgs:
                raise RowError(f"{where}: {key!r} holds only an assistant turn; the prompt's user turn is missing",
                               "empty_prompt")
        prompt = _check_prompt(msgs, where, key)
    else:
        prompt = _prompt(value, where, key, text_ok=key == "prompt")
    return PromptRow(with_system(prompt, system_prompt), rec, reference)


# -- the parts of a row ------------------------------------------------------------

def _required(rec: dict, key: str, where: str, what: str):
    value = rec.get(key)
    if value is None:
        raise RowError(f"{where}: {key!r} is {'null' if key in rec else 'missing'}; {what}")
    return value


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else ("an object" if isinstance(value, dict) else type(value).__name__)


def _content(value, where: str, what: str) -> str:
    """Text, or a list of text parts joined (as chat templates render them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        texts = []
        for j, part in enumerate(value):
            if part.get("type", "text") not in TEXT_PARTS or not isinstance(part.get("text"), str):
                raise RowError(f"{where}: {what}[{j}] is a {part.get('type')!r} part; only text can be read: "
                               "{\"type\": \"text\", \"text\": ...}")
            texts.append(part["text"])
        return "".join(texts)
    raise RowError(f"{where}: {what} must be text (or a list of text parts), got {_json_type(value)}")


def _messages(value, where: str, key: str) -> list[dict]:
    """{role, content} messages with text content; roles system (or developer), user, assistant."""
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}: {key!r} must be a non-empty list of {{role, content}} messages, got "
                       f"{'an empty list' if value == [] else _json_type(value)}")
    out = []
    for i, m in enumerate(value):
        what = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise RowError(f"{where}: {what} must be an object with role and content, got {_json_type(m)}")
        role = m.get("role")
        if role == "tool" or m.get("tool_calls") or m.get("function_call"):
            raise RowError(f"{where}: {what} is a tool call or tool result; these rows hold text turns only "
                           "(system, user, assistant): drop the row or write the exchange as text")
        if role not in ROLE_NAMES:
            raise RowError(f"{where}: {what} has unknown role {role!r}; allowed: system (or developer), user, assistant")
        if m.get("content") is None:
            raise RowError(f"{where}: {what}.content is {'null' if 'content' in m else 'missing'}; give the turn's text")
        out.append({"role": ROLE_NAMES[role], "content": _content(m["content"], where, f"{what}.content")})
    return out


def _prompt(value, where: str, key: str, text_ok: bool = True) -> list[dict]:
    """A prompt as messages ending with a user turn: text (one user turn) or messages."""
    if isinstance(value, str) or (text_ok and isinstance(value, list) and value and "role" not in value[0]
                                  and "type" in value[0]):
        if not text_ok:
            raise RowError(f"{where}: {key!r} must be a list of {{role, content}} messages, got text")
        text = _content(value, where, repr(key))
        if not text.strip():
            raise RowError(f"{where}: {key!r} is empty; every row needs the question its answers reply to",
                           "empty_prompt")
        return [{"role": "user", "content": text}]
    if isinstance(value, list):
        return _check_prompt(_messages(value, where, key), where, key)
    raise RowError(f"{where}: {key!r} must be text or a list of {{role, content}} messages, got {_json_type(value)}")


def _check_prompt(msgs: list[dict], where: str, key: str) -> list[dict]:
    """Turns in order (system?, then user and assistant in turn), none empty, ending with a user turn."""
    for i, m in enumerate(msgs):
        if not m["content"].strip():
            kind = "empty_prompt" if len(msgs) == 1 or m["role"] == "user" else "invalid"
            raise RowError(f"{where}: {key}[{i}].content is empty; every turn of the prompt needs its text", kind)
    if all(m["role"] == "system" for m in msgs):
        raise RowError(f"{where}: {key!r} has no user turn; give the question the answers reply to", "empty_prompt")
    try:
        check_order(msgs, where, need_answer=False)
    except UserError as e:
        raise RowError(f"{where}: {key}: {str(e).removeprefix(f'{where}: ')}", "format") from None
    if msgs[-1]["role"] != "user":
        raise RowError(f"{where}: {key!r} must end with a user turn (the one the answers reply to); its last turn is "
                       f"{msgs[-1]['role']!r}", "format")
    return msgs


def _answer(value, where: str, key: str, prompt: list[dict]) -> str:
    """One assistant answer: text, [assistant message], or the prompt's turns then the answer."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
        msgs = _messages(value, where, key)
        if msgs[-1]["role"] != "assistant":
            raise RowError(f"{where}: {key!r} must end with the assistant's answer; its last turn is "
                           f"{msgs[-1]['role']!r}", "format")
        if len(msgs) > 1 and _turns(msgs[:-1]) != _turns(prompt):
            raise RowError(f"{where}: {key!r} holds {len(msgs)} turns that are not the prompt followed by one answer; "
                           f"give the answer alone: [{{\"role\": \"assistant\", \"content\": ...}}]", "format")
        text = msgs[-1]["content"]
    elif isinstance(value, list):
        text = _content(value, where, repr(key)) if value else ""
    else:
        raise RowError(f"{where}: {key!r} must be text or [{{\"role\": \"assistant\", \"content\": ...}}], got "
                       f"{_json_type(value)}")
    if not text.strip():
        raise RowError(f"{where}: {key!r} is empty; every answer needs its text (drop the row if it has none)",
                       "empty_side")
    return text


def _turns(msgs: list[dict]) -> list[tuple[str, str]]:
    """The turns to compare a repeated prompt by: a system turn given in one place only does not count."""
    return [(m["role"], m["content"].strip()) for m in msgs if m["role"] != "system"]


def _implicit_prompt(rec: dict, where: str) -> tuple[list[dict], str, str]:
    """No "prompt": chosen and rejected are whole conversations; the prompt is the turns they share."""
    c, r = rec["chosen"], rec["rejected"]
    if not (isinstance(c, list) and isinstance(r, list)):
        raise RowError(f"{where}: 'prompt' is missing; give the question in 'prompt', or give 'chosen' and 'rejected' "
                       "as whole conversations (lists of messages) that share the prompt's turns")
    cm, rm = _messages(c, where, "chosen"), _messages(r, where, "rejected")
    for key, msgs in (("chosen", cm), ("rejected", rm)):
        if msgs[-1]["role"] != "assistant":
            raise RowError(f"{where}: {key!r} must end with the assistant's answer; its last turn is "
                           f"{msgs[-1]['role']!r}", "format")
    if cm[:-1] != rm[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(cm[:-1], rm[:-1])) if a != b), min(len(cm), len(rm)) - 1)
        raise RowError(f"{where}: 'chosen' and 'rejected' differ at turn {turn + 1}, before their final answers; "
                       "without 'prompt' they must share every turn but the last (give 'prompt' explicitly)", "format")
    if len(cm) < 2:
        raise RowError(f"{where}: 'prompt' is missing and 'chosen' holds only the answer; give the question in 'prompt'",
                       "empty_prompt")
    prompt = _check_prompt(cm[:-1], where, "chosen")
    for key, msgs in (("chosen", cm), ("rejected", rm)):
        if not msgs[-1]["content"].strip():
            raise RowError(f"{where}: {key}[{len(msgs) - 1}].content, the answer, is empty; every answer needs its text",
                           "empty_side")
    return prompt, cm[-1]["content"], rm[-1]["content"]
