"""Checks that look at one row at a time: encoding, personal data, length with the model's tokenizer."""

from __future__ import annotations

import re

from ..chat import encode_conversation, ensure_chat_template, render_chat
from .findings import Findings
from .items import LABELLED_TEXT, PROMPTS, Item

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
ENCODING_WARNING = ("encoding", "warning", "control characters, or mojibake (text decoded with the wrong charset)")


def _row_text(it: Item) -> str:
    """What the row-level checks read: input and target, and a pair's rejected answer."""
    return f"{it.input}\n{it.target}" + (f"\n{it.other}" if it.other is not None else "")


def check_encoding(it: Item, out: Findings) -> None:
    import ftfy

    text = _row_text(it)
    if CONTROL.search(text):
        out.get(*ENCODING_WARNING).add(it.file, it.line, reason="control character")
    elif ftfy.is_bad(text):
        out.get(*ENCODING_WARNING).add(it.file, it.line, reason="mojibake", fixed=ftfy.fix_text(it.input)[:80])


PII_PATTERNS = {
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}"),
    "ip_address": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"
                            r"|(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])"),  # IPv6: checked below
    "card_number": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    # international (+ and a country code: digits in any grouping) or national with separators;
    # spaces, dots or hyphens only (tabs and newlines separate numbers in tables, not phone digits)
    "phone": re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,12})){1,6}(?!\w)"
                        r"|(?<![\w.])(?:\(\d{2,5}\)[ .-]?)?\d{2,5}(?:(?:[ .-]\d{2,4}){1,3}| \d{6})(?![\w.])"),
}


# Visa, Mastercard (51-55, 2221-2720), Amex, Discover, JCB, Diners
CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|6011|65|35|30[0-5]|36|38)")


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


_YEARS = re.compile(r"(?:1[89]\d\d|20\d\d)(?:[\s.-]+(?:1[89]\d\d|20\d\d))+")  # "1998 - 2004 - 2011"


_DECIMALS = re.compile(r"^(?=.*\.)(?=.*[ -])[\d.]+[ -]")  # "672.42 36.89": dots mixed with other separators


def _ipv6(value: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(value).version == 6 and value.count(":") >= 2 and len(value) >= 6
    except ValueError:
        return False


def mask(value: str) -> str:
    """Never print PII in full: keep the first and last character of each run of letters/digits."""
    return re.sub(r"[A-Za-z0-9]{3,}", lambda m: m.group()[0] + "*" * (len(m.group()) - 2) + m.group()[-1], value)


def find_pii(text: str) -> list[tuple[str, str]]:
    found = []
    for kind, rx in PII_PATTERNS.items():
        for m in rx.finditer(text):
            v = m.group()
            digits = re.sub(r"\D", "", v)
            if kind == "card_number" and not (13 <= len(digits) <= 19 and _luhn(digits) and CARD_PREFIX.match(digits)):
                continue  # long order numbers pass Luhn one time in ten: require a card network prefix too
            if kind == "phone" and (len(digits) < 9 or len(digits) > 15 or any(v in f for _, f in found)
                                    or _YEARS.fullmatch(v) or _DECIMALS.search(v)):
                continue
            if kind == "ip_address" and ":" in v and not _ipv6(v):
                continue
            found.append((kind, v))
    return found


class PiiCheck:
    """Personal data: e-mail addresses, phone, card numbers and IP addresses, masked in the findings.

    The same address or number in many rows is an organisation's contact (a shop's support address in
    its own answers), not a person's: a value seen in SHARED_ROWS rows or more is reported once as
    `shared_contact` (info), and a row counts as `pii` only for values that are not shared. What stays
    in memory is a 64-bit hash per value and, per row with a hit, its place and its values' hashes."""

    SHARED_ROWS = 5

    def __init__(self):
        self.rows_with: dict[int, int] = {}   # value hash -> rows it appears in
        self.hits: list[tuple[str, int, list[tuple[str, int, str]]]] = []  # (file, line, [(kind, hash, masked)])

    def add(self, it: Item) -> None:
        found = {(kind, hash(v), mask(v)) for kind, v in find_pii(_row_text(it))}
        for _, h, _ in found:
            self.rows_with[h] = self.rows_with.get(h, 0) + 1
        if found:
            self.hits.append((it.file, it.line, sorted(found)))

    def finish(self, out: Findings) -> None:
        shared: dict[int, tuple] = {}  # value hash -> (kind, masked, file, line) of its first row
        for file, line, found in self.hits:
            own = [(k, m) for k, h, m in found if self.rows_with[h] < self.SHARED_ROWS]
            for k, h, m in found:
                if self.rows_with[h] >= self.SHARED_ROWS:
                    shared.setdefault(h, (k, m, file, line))
            if own:
                out.get("pii", "warning", "personal data: e-mail addresses, phone, card numbers, IP addresses "
                        "(masked)").add(file, line, kinds=sorted({k for k, _ in own}), masked=[m for _, m in own][:3])
        for h, (kind, masked, file, line) in shared.items():
            out.get("shared_contact", "info", f"the same contact in {self.SHARED_ROWS} rows or more: an "
                    "organisation's address or number, not personal data (check it belongs in the answers)").add(
                file, line, kind=kind, masked=masked, rows=self.rows_with[h])


def length_check(shape: str, tokenizer, max_length: int, out: Findings, truncation: str = "middle"):
    """too_long (and template overflow for chats): rows over max_length tokens with this tokenizer;
    `truncation`: how training cuts a too-long chat (middle, left or drop), so the finding says what goes.
    Chats, pairs (the prompt and the longer answer) and judgements are measured as conversations;
    GRPO prompts with the generation prompt."""
    if shape == LABELLED_TEXT:
        return TextLengthCheck(tokenizer, max_length, out)
    if shape == PROMPTS:
        return PromptLengthCheck(tokenizer, max_length, out)
    return ChatLengthCheck(tokenizer, max_length, out, truncation)


class TextLengthCheck:
    """too_long: inputs over max_length tokens."""

    BATCH = 512  # inputs are tokenized in batches (the fast tokenizer's batch call)

    def __init__(self, tokenizer, max_length: int, out: Findings):
        self.tok, self.max_length, self.out = tokenizer, max_length, out
        self.pending: list[Item] = []

    def add(self, it: Item) -> None:
        self.pending.append(it)
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        enc = self.tok([it.input for it in self.pending], add_special_tokens=True)["input_ids"]
        for it, ids in zip(self.pending, enc):
            if len(ids) > self.max_length:
                self.out.get("too_long", "warning", f"rows over max_length={self.max_length} tokens").add(
                    it.file, it.line, tokens=len(ids), cut=f"{len(ids) - self.max_length} tokens from the end")
        self.pending = []


class ChatLengthCheck:
    """too_long: conversations over max_length tokens with the chat template. An overflow that
    truncation would resolve by cutting into the final answer, or into the turn that answer replies
    to, is a `format` finding: the model would learn an answer cut short, or one to a question it
    cannot see."""

    def __init__(self, tokenizer, max_length: int, out: Findings, truncation: str = "middle"):
        self.tok, self.max_length, self.out, self.truncation = tokenizer, max_length, out, truncation
        ensure_chat_template(tokenizer)

    def flush(self) -> None:
        pass  # each conversation is checked as it comes

    def add(self, it: Item) -> None:
        n = self.max_length
        msgs = it.messages
        if it.other is not None and self._longer(it.other, it.target):  # a pair: the prompt and its longer answer
            msgs = msgs[:-1] + [{"role": "assistant", "content": it.other}]
        ids, _, last = encode_conversation(self.tok, msgs, "all_assistant")
        if len(ids) <= n:
            return
        answer = len(ids) - last
        if answer > n - 8:  # fit_length (tasks/generate.py) then keeps n // 4 of context and the answer's start
            kept = n - min(last, n // 4)
            self.out.get(*self._overflow()).add(it.file, it.line, tokens=len(ids), answer_tokens=answer,
                                                cut=f"{answer - kept} tokens from the end of the final answer")
            return
        # the tokens [head, head + cut) go, as fit_length (tasks/generate.py) cuts them
        head = min(n // 4, last, n - 8 - answer) if self.truncation == "middle" else 0
        cut = len(ids) - n
        question = self._question_start(msgs)
        if self.truncation == "drop":
            self.out.get("too_long", "warning", f"conversations over max_length={n} tokens with the template").add(
                it.file, it.line, tokens=len(ids), cut="the whole row (generate.truncation: drop)")
        elif head + cut > question:
            lost = head + cut - max(question, head)
            where = "from the middle of" if head > question else ("all earlier turns and " if question > head else "") + "the start of"
            self.out.get(*self._overflow()).add(
                it.file, it.line, tokens=len(ids), answer_tokens=answer,
                cut=f"{where} the prompt the final answer replies to: {lost} tokens")
        else:
            self.out.get("too_long", "warning", f"conversations over max_length={n} tokens with the template").add(
                it.file, it.line, tokens=len(ids), cut=f"{cut} {'oldest' if head == 0 else 'middle'} history tokens")

    def _longer(self, a: str, b: str) -> bool:
        """Whether answer a has more tokens than answer b (the template adds the same to both)."""
        if a == b:
            return False
        ids = self.tok([a, b], add_special_tokens=False)["input_ids"]
        return len(ids[0]) > len(ids[1])

    def _overflow(self) -> tuple[str, str, str]:
        return ("format", "warning", f"template overflow: the chat-template render exceeds max_length={self.max_length} "
                "tokens and truncation would cut into the final answer or the turn it replies to")

    def _question_start(self, msgs: list[dict]) -> int:
        """Token position where the turn the final answer replies to begins (0: no earlier answer)."""
        answers = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        if len(answers) < 2:
            return 0
        return len(encode_conversation(self.tok, msgs[: answers[-2] + 1], "all_assistant")[0])


class PromptLengthCheck:
    """too_long for GRPO prompts: the prompt with the template's generation prompt leaves no room
    under max_length for the sampled answers."""

    def __init__(self, tokenizer, max_length: int, out: Findings):
        self.tok, self.max_length, self.out = tokenizer, max_length, out
        ensure_chat_template(tokenizer)

    def flush(self) -> None:
        pass

    def add(self, it: Item) -> None:
        ids = self.tok(render_chat(self.tok, it.messages, gen=True), add_special_tokens=False)["input_ids"]
        if len(ids) >= self.max_length:
            self.out.get("too_long", "warning", f"prompts of max_length={self.max_length} tokens or more with the "
                         "template: no room left for the sampled answers").add(it.file, it.line, tokens=len(ids))
