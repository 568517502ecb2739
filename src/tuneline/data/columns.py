"""Which column holds the text and which the label, and one row's text and label, checked.

Shared by the classify task (strict: a bad row is a UserError) and the data audit (lenient: a
bad row is a finding), so both read the same columns from the same file.
"""

from __future__ import annotations

from ..errors import UserError
from .io import Rows

HEAD_ROWS = 2000  # the first rows that column guessing and chat-format detection look at

TEXT_COLUMNS = ("text", "sentence", "review", "content", "input", "document", "utterance", "query",
                "question", "comment", "body", "instruction")
LABEL_COLUMNS = ("label", "labels", "sentiment", "category", "class", "intent", "target", "topic", "y")


def guess_columns(rows: Rows, sample: int = HEAD_ROWS) -> tuple[str | None, str | None]:
    """For unusual column names: the text is the string column with the longest values, the
    label a column with few distinct values. Used only when no usual name matches."""
    recs = rows.records[:sample]
    stats = {}
    for c in rows.columns:
        vals = [r.get(c) for r in recs if r.get(c) is not None]
        if not vals:
            continue
        strings = [v for v in vals if isinstance(v, str)]
        mean_len = sum(len(v) for v in strings) / len(strings) if strings else 0
        distinct = len({str(v) for v in vals if not isinstance(v, (list, dict))})
        stats[c] = (mean_len, distinct, len(strings) == len(vals))
    texts = sorted((c for c, (m, _, all_str) in stats.items() if all_str and m > 0), key=lambda c: -stats[c][0])
    text = texts[0] if texts else None
    n = len(recs)
    labels = [c for c, (_, k, _) in stats.items() if c != text and 2 <= k <= max(2, min(100, n // 2))]
    label = min(labels, key=lambda c: stats[c][1]) if labels else None
    return text, label


def find_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...],
                guessed: str | None = None) -> str | None:
    """`wanted` if given (None when the file lacks it), else the first usual name in `candidates`
    (any case), else `guessed`."""
    if wanted:
        return wanted if wanted in columns else None
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), guessed)


def pick_column(rows: Rows, wanted: str | None, candidates: tuple[str, ...], key: str,
                guessed: str | None = None) -> str:
    """find_column, strictly: a UserError names the recipe `key` that chooses the column."""
    if wanted and wanted not in rows.columns:
        raise UserError(f"{key}: column {wanted!r} is not in {rows.path} (columns: {', '.join(rows.columns)})")
    col = find_column(rows.columns, wanted, candidates, guessed)
    if col is None:
        raise UserError(f"{rows.path}: cannot tell which column is the {key.split('_')[0].split('.')[-1]} "
                        f"(columns: {', '.join(rows.columns)}); set {key} in the recipe")
    return col


def label_to_str(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def text_and_label(rec: dict, where: str, text_col: str, label_col: str | None) -> tuple[str, str | None]:
    """One row's text and label (as a string), checked; `where` (file:line) names a bad row."""
    t = rec.get(text_col)
    if t is not None and not isinstance(t, str):
        raise UserError(f"{where}: {text_col!r} must be text, got {type(t).__name__} ({str(t)[:40]}); "
                        "quote it, or point data.text_column at the text")
    if not isinstance(t, str) or not t.strip():
        raise UserError(f"{where}: {text_col!r} is missing or empty; every row needs text")
    if label_col is None:
        return t, None
    lab = rec.get(label_col)
    if lab is None or (isinstance(lab, str) and not lab.strip()):
        raise UserError(f"{where}: {label_col!r} is missing or empty; every row needs a label")
    if isinstance(lab, (list, dict)):
        raise UserError(f"{where}: {label_col!r} must be one label, got {type(lab).__name__}")
    return t, label_to_str(lab)
