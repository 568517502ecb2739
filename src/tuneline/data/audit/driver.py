"""audit(): one streaming pass over every split, then the checks across rows on the compact index.

Pass 1 reads each split line by line: per-row checks run at once (invalid rows, empty text,
encoding, personal data, length), and each usable row leaves only its compact state in the
index and, for label_noise, a chance to enter a bounded sample. Pass 2 reads again only if
near-duplicate candidates need verifying, keeping the text of the candidate rows alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..io import Rows
from . import index as ix
from .findings import Finding, Findings
from .items import INVALID, make_reader, normalise
from .label_noise import Reservoir, check_label_noise
from . import near
from .row_checks import LengthCheck, check_encoding, check_pii
from .source import Source


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


def guess_task(path: str | Path) -> str:
    """generate if the first rows look like chats, else classify."""
    cols = set(Source("train", path).head.columns)
    return "generate" if cols & {"messages", "conversations", "completion", "output"} else "classify"


def audit(splits: dict[str, Rows | str | Path | None], task: str, *, text_column: str | None = None,
          label_column: str | None = None, fmt: str = "auto", tokenizer=None, max_length: int | None = None,
          label_noise: bool = True, system_prompt: str | None = None) -> AuditResult:
    """Audit the splits (train first): each a path (JSONL is streamed) or rows already read."""
    out = Findings()
    index = ix.RowIndex(task)
    sample = Reservoir() if task == "classify" and label_noise else None
    lengths = LengthCheck(task, tokenizer, max_length, out) if tokenizer is not None and max_length else None
    rows_count: dict[str, int] = {}
    drop_reasons: dict[tuple[str, int], str] = {}
    readers = []
    for split, data in splits.items():
        if data is None:
            continue
        src = Source(split, data)
        reader = make_reader(task, src.head, split, text_column, label_column, fmt, system_prompt)
        code = index.source(split, src.path)
        readers.append((src, reader))
        n = 0
        for line, rec, problem, bad_bytes in src.events():
            n += 1
            if bad_bytes:
                out.get("encoding", "error", "bytes that are not valid UTF-8").add(src.path, line, reason="invalid UTF-8")
            if problem is not None:
                out.get(*INVALID).add(src.path, line, reason=problem)
                drop_reasons[(src.path, line)] = "invalid_rows"
                continue
            it = reader.item(rec, line, out)
            if it is None:
                drop_reasons[(src.path, line)] = "invalid_or_empty"
                continue
            check_encoding(it, out)
            check_pii(it, out)
            if lengths is not None:
                lengths.add(it)
            index.add(code, it)
            if sample is not None and split == "train":
                sample.add(it)
        if n == 0 and not isinstance(data, Rows):
            raise UserError(f"{src.path}: no rows (the file is empty or holds only blank lines or a header); "
                            "give a file with one row per line")
        rows_count[split] = n
    if lengths is not None:
        lengths.flush()

    cols = index.arrays()
    repeats = ix.check_duplicates(cols, out)
    ix.check_conflicts(cols, out)
    leaked = ix.check_exact_leakage(cols, out)
    pairs = ix.near_candidates(cols)
    ix.report_near(cols, _verify(pairs, readers), out)
    if task == "classify":
        ix.check_imbalance(cols, out)
        if sample is not None:
            check_label_noise(sample, out)
    for k in repeats:
        drop_reasons[cols.where(k)] = "duplicates"
    for j in leaked:
        drop_reasons[cols.where(j)] = "leakage"
    drop: dict[str, set[int]] = defaultdict(set)
    for (file, line) in drop_reasons:
        drop[file].add(line)
    return AuditResult(rows_count, out.as_list(), dict(drop), drop_reasons)


def _verify(pairs, readers) -> list[tuple[int, int, float]]:
    """Edit similarity of the candidate pairs: the second pass, keeping the candidate rows' text only."""
    if not len(pairs):
        return []
    wanted = set(np.unique(pairs).tolist())
    text: dict[int, str] = {}
    k = 0
    scratch = Findings()  # pass 1 reported every row already
    for src, reader in readers:
        for line, rec, problem, _ in src.events():
            if problem is not None:
                continue
            it = reader.item(rec, line, scratch)
            if it is None:
                continue
            if k in wanted:
                text[k] = normalise(it.input)
            k += 1
    out = []
    for start in range(0, len(pairs), 4096):  # in chunks: a list of all pairs would cost ~100 bytes each
        for j, k in pairs[start:start + 4096].tolist():
            sim = near.similarity(text[j], text[k])
            if sim >= near.THRESHOLD:
                out.append((j, k, sim))
    return out
