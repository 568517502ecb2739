"""The data audit: what is wrong with the rows before any training time is spent.

Each finding has a stable check name, a severity (error | warning | info), a count and
examples with file and line. Checks: invalid_rows, empty_text, encoding, format (generate),
duplicates, near_duplicates, conflicting_labels, leakage, imbalance, too_long, pii, label_noise.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from ..errors import UserError
from .io import Rows

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MAX_EXAMPLES = 10


@dataclass
class Finding:
    check: str
    severity: str
    message: str
    count: int = 0
    examples: list[dict] = field(default_factory=list)

    def add(self, file: str, line: int | None, **detail) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"file": file, "line": line, **detail})


@dataclass
class Item:
    """One usable row: what the model reads (input) and what it should produce (target)."""

    split: str
    file: str
    line: int
    input: str
    target: str
    messages: list | None = None


class Findings:
    def __init__(self):
        self.by_check: dict[str, Finding] = {}

    def get(self, check: str, severity: str, message: str) -> Finding:
        key = f"{check}:{severity}"
        if key not in self.by_check:
            self.by_check[key] = Finding(check, severity, message)
        return self.by_check[key]

    def as_list(self) -> list[Finding]:
        return sorted((f for f in self.by_check.values() if f.count), key=lambda f: (SEVERITY_ORDER[f.severity], f.check))


_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().translate(_PUNCT).split())


# -- reading rows into items -------------------------------------------------

def _classify_items(rows: Rows, split: str, text_col: str | None, label_col: str | None, out: Findings) -> list[Item]:
    from ..tasks.classify import LABEL_COLUMNS, TEXT_COLUMNS, guess_columns, label_to_str

    guess = guess_columns(rows)

    def pick(wanted, candidates, guessed):
        if wanted:
            return wanted if wanted in rows.columns else None
        lower = {c.lower(): c for c in rows.columns}
        return next((lower[c] for c in candidates if c in lower), guessed)

    tcol, lcol = pick(text_col, TEXT_COLUMNS, guess[0]), pick(label_col, LABEL_COLUMNS, guess[1])
    if tcol is None or lcol is None:
        missing = "text" if tcol is None else "label"
        raise UserError(f"{rows.path}: cannot tell which column is the {missing} (columns: {', '.join(rows.columns)}); "
                        f"give --text-column / --label-column")
    items = []
    for i, rec in enumerate(rows.records):
        line = rows.lines[i]
        t, lab = rec.get(tcol), rec.get(lcol)
        if t is None or lab is None or isinstance(lab, (list, dict)) or not isinstance(t, str):
            what = tcol if (t is None or not isinstance(t, str)) else lcol
            out.get("invalid_rows", "error", "rows that lack a field the task needs").add(
                rows.path, line, reason=f"{what!r} missing or not a single value")
            continue
        if not t.strip() or (isinstance(lab, str) and not lab.strip()):
            out.get("empty_text", "error", "empty or whitespace-only inputs or labels").add(
                rows.path, line, field=tcol if not t.strip() else lcol)
            continue
        items.append(Item(split, rows.path, line, t, label_to_str(lab)))
    return items


def _generate_items(rows: Rows, split: str, fmt: str, cols: tuple, out: Findings) -> list[Item]:
    from .chat import detect_format, to_messages

    if fmt == "auto":
        fmt = detect_format(rows, *(cols if cols[0] != "prompt" or cols[1] != "completion" else (None, None)))
    items = []
    for i, rec in enumerate(rows.records):
        line = rows.lines[i]
        try:
            msgs = to_messages(rec, fmt, f"{rows.path}:{line}", columns=cols)
        except UserError as e:
            reason = str(e).split(": ", 1)[-1]
            if "missing or empty" in reason:
                out.get("empty_text", "error", "empty or whitespace-only inputs or answers").add(rows.path, line, reason=reason)
            elif "must be" in reason:
                out.get("invalid_rows", "error", "rows that lack the fields the task needs").add(rows.path, line, reason=reason)
            else:
                out.get("format", "error", "conversation structure: roles, order, missing answers").add(
                    rows.path, line, reason=reason)
            continue
        prompt = "\n".join(m["content"] for m in msgs[:-1] if m["role"] != "system")
        items.append(Item(split, rows.path, line, prompt, msgs[-1]["content"], msgs))
    return items


# -- the checks ----------------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_encoding(rows: Rows, items: list[Item], out: Findings) -> None:
    import ftfy

    for line in rows.bad_utf8:
        out.get("encoding", "error", "bytes that are not valid UTF-8").add(rows.path, line, reason="invalid UTF-8")
    for it in items:
        text = f"{it.input}\n{it.target}"
        if CONTROL.search(text):
            out.get("encoding", "warning", "control characters, or mojibake (text decoded with the wrong charset)").add(
                it.file, it.line, reason="control character")
        elif ftfy.is_bad(text):
            out.get("encoding", "warning", "control characters, or mojibake (text decoded with the wrong charset)").add(
                it.file, it.line, reason="mojibake", fixed=ftfy.fix_text(it.input)[:80])


def check_duplicates(items: list[Item], out: Findings) -> set[int]:
    """Exact duplicates (input and target, normalised) within each split. Returns ids of repeats."""
    repeats = set()
    seen: dict[tuple, Item] = {}
    for k, it in enumerate(items):
        key = (it.split, normalise(it.input), normalise(it.target))
        if key in seen:
            first = seen[key]
            out.get("duplicates", "warning", "exact duplicates after normalising case, whitespace and punctuation").add(
                it.file, it.line, duplicate_of=first.line)
            repeats.add(k)
        else:
            seen[key] = it
    return repeats


def check_conflicts(items: list[Item], task: str, out: Findings) -> None:
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        if it.split == "train":
            groups[normalise(it.input)].append(it)
    sev = "warning" if task == "classify" else "info"
    for group in groups.values():
        targets = {normalise(it.target) for it in group}
        if len(targets) > 1:
            first = group[0]
            out.get("conflicting_labels", sev, "the same input with different labels or answers").add(
                first.file, first.line, lines=[it.line for it in group][:10],
                labels=sorted({it.target for it in group})[:5] if task == "classify" else None)


def _shingles(text: str) -> list[bytes]:
    words = normalise(text).split()
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [g.encode() for g in grams] or [b""]


def check_near_and_leakage(items: list[Item], out: Findings, threshold: float = 0.8) -> set[int]:
    """Exact and MinHash-LSH near duplicates of inputs: within train, and train vs validation/test.
    Returns ids of train rows leaked into an evaluation split."""
    from datasketch import MinHash, MinHashLSH

    leaked: set[int] = set()
    train_idx = [k for k, it in enumerate(items) if it.split == "train"]
    eval_idx = [k for k, it in enumerate(items) if it.split != "train"]
    exact_train: dict[str, int] = {}
    for k in train_idx:
        exact_train.setdefault(normalise(items[k].input), k)
    for k in eval_idx:
        j = exact_train.get(normalise(items[k].input))
        if j is not None:
            it = items[k]
            out.get("leakage", "warning", "evaluation rows whose input also appears in train (exactly): "
                    "test scores will be too good").add(
                it.file, it.line, train_line=items[j].line, kind="exact")
            leaked.add(j)
    if len(items) < 2:
        return leaked
    num_perm = 64
    hashes = MinHash.bulk([_shingles(items[k].input) for k in range(len(items))], num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for k in train_idx:
        lsh.insert(k, hashes[k], check_duplication=False)
    exact_keys = {k: normalise(items[k].input) for k in range(len(items))}
    reported_pairs = set()
    for k in range(len(items)):
        it = items[k]
        for j in lsh.query(hashes[k]):
            if j == k or exact_keys[j] == exact_keys[k]:
                continue  # exact matches are reported by duplicates / leakage
            if it.split == "train":
                pair = (min(j, k), max(j, k))
                if pair in reported_pairs:
                    continue
                reported_pairs.add(pair)
                out.get("near_duplicates", "info", f"near-duplicate inputs in train (MinHash Jaccard >= {threshold})").add(
                    it.file, it.line, similar_to=items[j].line)
            else:
                out.get("leakage", "warning", f"evaluation rows nearly identical to a train row (MinHash Jaccard >= {threshold})").add(
                    it.file, it.line, train_line=items[j].line, kind="near")
                break
    return leaked


def check_imbalance(items: list[Item], out: Findings) -> dict:
    train = Counter(it.target for it in items if it.split == "train")
    if not train:
        return {}
    most, least = train.most_common()[0], train.most_common()[-1]
    ratio = most[1] / max(least[1], 1)
    dist = dict(sorted(train.items()))
    few = [lab for lab, n in train.items() if n < 5]
    sev = "warning" if ratio >= 10 or few or len(train) < 2 else "info"
    f = out.get("imbalance", sev, "label distribution in train (majority / minority ratio, labels with few rows)")
    f.count = len(few) if few else (1 if sev == "warning" else 0) or 1
    f.examples.append({"file": items[0].file, "line": None, "distribution": dist,
                       "majority_minority_ratio": round(ratio, 2), "labels_under_5_rows": few})
    if len(train) < 2:
        # every other label is "unseen" then; the one label is the cause worth naming
        out.get("imbalance", "error", f"only one label ({most[0]!r}) in train; a classifier needs 2 or more").add(
            next(it.file for it in items if it.split == "train"), None, labels=list(train))
        return dist
    for it in items:
        if it.split != "train" and it.target not in train:
            out.get("imbalance", "error", "labels in validation/test that never occur in train").add(
                it.file, it.line, label=it.target)
    return dist


def check_too_long(items: list[Item], task: str, tokenizer, max_length: int, out: Findings) -> None:
    if tokenizer is None:
        return
    if task == "classify":
        enc = tokenizer([it.input for it in items], add_special_tokens=True)["input_ids"]
        for it, ids in zip(items, enc):
            if len(ids) > max_length:
                out.get("too_long", "warning", f"rows over max_length={max_length} tokens").add(
                    it.file, it.line, tokens=len(ids), cut=f"{len(ids) - max_length} tokens from the end")
    else:
        from ..tasks.generate import encode_conversation, ensure_chat_template

        ensure_chat_template(tokenizer)
        for it in items:
            ids, _, last = encode_conversation(tokenizer, it.messages, "all_assistant")
            if len(ids) > max_length:
                answer = len(ids) - last
                cut = (f"{len(ids) - max_length} oldest history tokens" if answer <= max_length - 8
                       else f"history and {answer - max_length + max_length // 4} answer tokens (answer alone too long)")
                out.get("too_long", "warning", f"conversations over max_length={max_length} tokens with the template").add(
                    it.file, it.line, tokens=len(ids), cut=cut)


PII_PATTERNS = {
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}"),
    "ip_address": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "card_number": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    "phone": re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,3}(?![\w.])"),
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
            if kind == "phone" and (len(digits) < 9 or len(digits) > 15 or any(v in f for _, f in found)):
                continue
            found.append((kind, v))
    return found


def check_pii(items: list[Item], out: Findings) -> None:
    for it in items:
        hits = find_pii(f"{it.input}\n{it.target}")
        if hits:
            kinds = sorted({k for k, _ in hits})
            out.get("pii", "warning", "personal data: e-mail addresses, phone, card numbers, IP addresses (masked)").add(
                it.file, it.line, kinds=kinds, masked=[mask(v) for _, v in hits][:3])


def check_label_noise(items: list[Item], out: Findings, max_rows: int = 100_000) -> None:
    """Confident learning (cleanlab) on out-of-fold probabilities of a quick TF-IDF model."""
    train = [it for it in items if it.split == "train"][:max_rows]
    counts = Counter(it.target for it in train)
    if len(counts) < 2 or min(counts.values()) < 3 or len(train) < 30:
        return
    import numpy as np
    from cleanlab.filter import find_label_issues
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    labels = sorted(counts)
    y = np.array([labels.index(it.target) for it in train])
    x = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=200_000).fit_transform(
        [it.input for it in train])
    folds = min(5, min(counts.values()))
    probs = cross_val_predict(LogisticRegression(max_iter=300, C=20.0), x, y, cv=folds, method="predict_proba")
    accuracy = float((probs.argmax(1) == y).mean())
    if accuracy < 0.75:
        return  # the quick model is too weak to dispute anyone's labels (measured: false alarms below this)
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    # keep strong disputes only: the quick model is confident elsewhere and nearly rules out the label
    ranked = [i for i in ranked if probs[i][y[i]] < 0.15 and probs[i].max() >= 0.6]
    share = len(ranked) / len(train)
    sev = "warning" if share >= 0.01 else "info"
    f = out.get("label_noise", sev, f"rows whose label a cross-validated quick model (accuracy {accuracy:.2f}) "
                                    "strongly disputes, most doubtful first")
    for i in ranked:
        it = train[i]
        f.add(it.file, it.line, label=it.target, suggested=labels[int(probs[i].argmax())],
              confidence_in_label=round(float(probs[i][y[i]]), 3))


# -- driver ----------------------------------------------------------------------

@dataclass
class AuditResult:
    rows: dict
    findings: list[Finding]
    drop: dict[str, set[int]]     # file -> lines that --fix drops, with the reason in drop_reasons
    drop_reasons: dict[tuple[str, int], str]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def as_dict(self) -> dict:
        return {"rows": self.rows, "findings": [asdict(f) for f in self.findings]}


def audit(splits: dict[str, Rows], task: str, *, text_column: str | None = None, label_column: str | None = None,
          fmt: str = "auto", tokenizer=None, max_length: int | None = None, label_noise: bool = True) -> AuditResult:
    out = Findings()
    items: list[Item] = []
    rows_count = {}
    for split, rows in splits.items():
        if rows is None:
            continue
        rows_count[split] = len(rows) + len(rows.invalid)
        for line, reason in rows.invalid:
            out.get("invalid_rows", "error", "lines that do not parse, or lack the fields the task needs").add(
                rows.path, line, reason=reason)
        if task == "classify":
            got = _classify_items(rows, split, text_column, label_column, out)
        else:
            cols = (text_column or "prompt", label_column or "completion")
            got = _generate_items(rows, split, fmt, cols, out)
        check_encoding(rows, got, out)
        items += got
    drop_reasons: dict[tuple[str, int], str] = {}
    repeats = check_duplicates(items, out)
    check_conflicts(items, task, out)
    leaked = check_near_and_leakage(items, out)
    if task == "classify":
        check_imbalance(items, out)
        if label_noise:
            check_label_noise(items, out)
    if tokenizer is not None and max_length:
        check_too_long(items, task, tokenizer, max_length, out)
    check_pii(items, out)
    for k in repeats:
        drop_reasons[(items[k].file, items[k].line)] = "duplicates"
    for k in leaked:
        drop_reasons[(items[k].file, items[k].line)] = "leakage"
    usable = {(it.file, it.line) for it in items}
    for split, rows in splits.items():
        if rows is None:
            continue
        for line, _ in rows.invalid:
            drop_reasons[(rows.path, line)] = "invalid_rows"
        for line in rows.lines:
            if (rows.path, line) not in usable:
                drop_reasons.setdefault((rows.path, line), "invalid_or_empty")
    drop: dict[str, set[int]] = defaultdict(set)
    for (file, line) in drop_reasons:
        drop[file].add(line)
    return AuditResult(rows_count, out.as_list(), dict(drop), drop_reasons)


def error_summary(result: AuditResult) -> str:
    """The audit's errors in one line each: check, what, and the first file:line it was seen at."""
    parts = []
    for f in result.errors:
        ex = f.examples[0] if f.examples else {}
        where = f"{ex['file']}:{ex['line']}" if ex.get("line") else ex.get("file", "")
        detail = ", ".join(f"{k}={v!r}" for k, v in ex.items() if k not in ("file", "line") and v is not None)
        more = f" and {f.count - 1} more" if f.count > 1 else ""
        parts.append(f"{f.check}: {f.message} (first at {where}{' ' + detail if detail else ''}{more})"[:300])
    return "; ".join(parts)


def format_table(result: AuditResult) -> str:
    lines = ["Data audit: " + ", ".join(f"{k} {v} rows" for k, v in result.rows.items())]
    if not result.findings:
        return lines[0] + "\n  no findings"
    for f in result.findings:
        lines.append(f"  {f.severity.upper():<8}{f.check:<20}{f.count:>7}  {f.message}")
        for ex in f.examples[:3]:
            where = f"{ex['file']}:{ex['line']}" if ex.get("line") else ex["file"]
            detail = ", ".join(f"{k}={v}" for k, v in ex.items() if k not in ("file", "line") and v is not None)
            lines.append(f"            {where}  {detail}"[:200])
    return "\n".join(lines)
