"""Chat rows: detect the format, normalise to OpenAI-style messages, check each row, and turn a
conversation into token ids and loss labels with the model's chat template.

Formats: OpenAI `messages`, `prompt` + `completion`, Alpaca (`instruction`, `input`, `output`),
ShareGPT (`conversations` with `from` / `value`). The generate task trains on these tokens; the
data audit measures the same encoding for its length checks.
"""

from __future__ import annotations

from ..errors import UserError
from .io import Rows

FORMATS = ("messages", "prompt_completion", "alpaca", "sharegpt")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "bot": "assistant", "model": "assistant"}

# A plain template for models without one of their own (documented in README):
#   <|system|>\n...\n<|user|>\n...\n<|assistant|>\n...<eos>\n
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
IGNORE = -100  # the label of tokens outside the answers: no loss there


def detect_format(rows: Rows, prompt_col: str | None = None, completion_col: str | None = None) -> str:
    cols = set(rows.columns)
    if prompt_col and completion_col:
        missing = [c for c in (prompt_col, completion_col) if c not in cols]
        if missing:
            raise UserError(f"{rows.path}: column {missing[0]!r} (data.text_column / data.label_column) is not in "
                            f"the file (columns: {', '.join(rows.columns)})")
        return "prompt_completion"
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    raise UserError(
        f"{rows.path}: cannot tell the chat format from the columns ({', '.join(rows.columns)}); "
        "use messages, prompt + completion, instruction + output (Alpaca) or conversations (ShareGPT), "
        "or set data.format"
    )


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: {what} is missing or empty")
    return value


def to_messages(rec: dict, fmt: str, where: str, need_answer: bool = True,
                columns: tuple[str, str] = ("prompt", "completion")) -> list[dict]:
    if fmt == "messages":
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise UserError(f"{where}: messages[{i}] must be an object with role and content")
            role = m.get("role")
            if role not in ROLES:
                raise UserError(f"{where}: messages[{i}] has unknown role {role!r}; allowed: {', '.join(ROLES)}")
            out.append({"role": role, "content": _text(m.get("content"), where, f"messages[{i}].content")})
    elif fmt == "sharegpt":
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise UserError(f"{where}: 'conversations' must be a non-empty list of {{from, value}}")
        out = []
        for i, m in enumerate(conv):
            if not isinstance(m, dict):
                raise UserError(f"{where}: conversations[{i}] must be an object with from and value")
            role = SHAREGPT_ROLES.get(str(m.get("from", "")).lower())
            if role is None:
                raise UserError(f"{where}: conversations[{i}] has unknown 'from' {m.get('from')!r}; "
                                f"allowed: {', '.join(sorted(SHAREGPT_ROLES))}")
            out.append({"role": role, "content": _text(m.get("value"), where, f"conversations[{i}].value")})
    elif fmt == "alpaca":
        instruction = _text(rec.get("instruction"), where, "'instruction'")
        extra = rec.get("input")
        prompt = instruction if not (isinstance(extra, str) and extra.strip()) else f"{instruction}\n\n{extra}"
        out = [{"role": "user", "content": prompt}]
        if need_answer or rec.get("output") is not None:
            out.append({"role": "assistant", "content": _text(rec.get("output"), where, "'output'")})
    elif fmt == "prompt_completion":
        pcol, ccol = columns
        out = [{"role": "user", "content": _text(rec.get(pcol), where, f"{pcol!r}")}]
        answer = rec.get(ccol)
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # a label or number as the answer
        if need_answer or answer is not None:
            out.append({"role": "assistant", "content": _text(answer, where, f"{ccol!r}")})
    else:  # pragma: no cover - schema forbids it
        raise UserError(f"data.format: unknown {fmt!r}")
    check_order(out, where, need_answer)
    return out


def check_order(msgs: list[dict], where: str, need_answer: bool = True) -> None:
    """system? then user / assistant alternating, starting with user; ends with assistant (training)."""
    i = 0
    if msgs and msgs[0]["role"] == "system":
        i = 1
    expected = "user"
    for j in range(i, len(msgs)):
        role = msgs[j]["role"]
        if role != expected:
            raise UserError(f"{where}: turn {j + 1} is {role!r} but {expected!r} was expected "
                            "(a system turn first, then user and assistant in turn)")
        expected = "assistant" if expected == "user" else "user"
    if need_answer:
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError(f"{where}: no assistant turn; every training row needs an answer to learn")
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last turn must be the assistant's answer")
    elif msgs[-1]["role"] != "user" and msgs[-1]["role"] != "assistant":
        raise UserError(f"{where}: nothing to answer")


# -- chats as tokens, with the model's chat template ------------------------------

def ensure_chat_template(tokenizer) -> bool:
    """Use the model's own template; give a plain one to models without. True if we added it."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = PLAIN_TEMPLATE
    return True


def render_chat(tokenizer, msgs: list[dict], gen: bool) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def with_system(msgs: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and msgs[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def encode_conversation(tokenizer, msgs: list[dict], loss_on: str) -> tuple[list[int], list[int], int]:
    """Token ids and labels (IGNORE outside assistant answers). Returns (ids, labels, start of last answer).

    The text is rendered turn by turn: for each assistant turn the prompt part is the template
    with a generation prompt, the answer part what the full render adds after it (the answer
    and the end-of-turn token, so the model learns to stop). Masking follows these spans, not
    token ids: SmolLM2's pad token is its end-of-turn token, and masking by id would drop it.
    """
    ids: list[int] = []
    labels: list[int] = []
    prev = ""
    last_start = 0
    answers = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    for i in answers:
        prompt = render_chat(tokenizer, msgs[:i], gen=True)
        full = render_chat(tokenizer, msgs[: i + 1], gen=False)
        if not prompt.startswith(prev) or not full.startswith(prompt):
            raise UserError("model: its chat template does not render conversations turn by turn "
                            "(a prefix changes when a turn is added); set a simpler template")
        p_ids = tokenizer(prompt[len(prev):], add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        ids += p_ids
        labels += [IGNORE] * len(p_ids)
        last_start = len(ids)
        train_this = loss_on == "all_assistant" or i == answers[-1]
        ids += a_ids
        labels += a_ids if train_this else [IGNORE] * len(a_ids)
        prev = full
    return ids, labels, last_start
