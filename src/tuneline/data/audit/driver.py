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

from ..io import Rows, no_rows
from . import index as ix
from .findings import Finding, Findings
from .items import (CHAT, INVALID, JUDGEMENTS, LABELLED_TEXT, PAIRS, PREFERENCE_SHAPES, PROMPTS, SHAPES, Item,
                    make_reader, normalise)
from .label_noise import Reservoir, check_label_noise
from . import near
from .row_checks import PiiCheck, check_encoding, length_check
from .source import Source

CHAT_SIGNS = {"messages", "conversations", "completion", "output"}  # columns only chat rows have
PAIR_SIGNS = {"chosen", "rejected", "preferred_output", "non_preferred_output"}  # columns only pairs have


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


def guess_shape(path: str | Path) -> str:
    """pairs or judgements if the first rows hold preferences, chat if they look like chats, else
    labelled_text (GRPO prompts look like chats: name the task to audit them as prompts)."""
    head = Source("train", path).head
    cols = set(head.columns)
    if cols & PAIR_SIGNS:
        return PAIRS
    if {"prompt", "completion", "label"} <= cols and all(isinstance(r["label"], bool) for r in head.records
                                                         if "label" in r):
        return JUDGEMENTS
    return CHAT if cols & CHAT_SIGNS else LABELLED_TEXT


def audit(splits: dict[str, Rows | str | Path | None], shape: str, *, text_column: str | None = None,
          label_column: str | None = None, fmt: str = "auto", tokenizer=None, max_length: int | None = None,
          label_noise: bool = True, system_prompt: str | None = None, truncation: str = "middle") -> AuditResult:
    """Audit the splits (train first): each a path (JSONL is streamed) or rows already read.
    `shape` is what the rows hold (a task's `data_shape`): "labelled_text", "chat", or a preference
    shape: "pairs", "judgements", "prompts" (`fmt` then: auto or one of data/preference.py's formats;
    `system_prompt` is added to prompts without one, as training does; the columns are not used)."""
    if shape not in SHAPES:
        raise ValueError(f"the data audit checks rows of shape {', '.join(SHAPES)}, not {shape!r}")
    out = Findings()
    scan = _FirstPass(shape, out, dict(text_column=text_column, label_column=label_column, fmt=fmt,
                                       system_prompt=system_prompt),
                      length_check(shape, tokenizer, max_length, out, truncation) if tokenizer is not None and max_length
                      else None,
                      Reservoir() if shape == LABELLED_TEXT and label_noise else None)
    for split, data in splits.items():
        if data is not None:
            scan.read(split, data)
    if scan.lengths is not None:
        scan.lengths.flush()
    scan.pii.finish(out)
    _check_across_rows(scan)
    drop: dict[str, set[int]] = defaultdict(set)
    for (file, line) in scan.drop_reasons:
        drop[file].add(line)
    return AuditResult(scan.rows_count, out.as_list(), dict(drop), scan.drop_reasons)


class _FirstPass:
    """Pass 1 over each split: per-row checks at once; a usable row leaves its compact state in the
    index and, for label_noise, a chance to enter the sample."""

    def __init__(self, shape: str, out: Findings, reader_options: dict, lengths, sample: Reservoir | None):
        self.shape, self.out, self.reader_options = shape, out, reader_options
        self.lengths, self.sample = lengths, sample
        self.index = ix.RowIndex(labelled=shape == LABELLED_TEXT)
        self.rows_count: dict[str, int] = {}
        self.drop_reasons: dict[tuple[str, int], str] = {}
        self.readers = []
        self.pii = PiiCheck()

    def read(self, split: str, data: Rows | str | Path) -> None:
        src = Source(split, data)
        reader = make_reader(self.shape, src.head, split, **self.reader_options)
        code = self.index.source(split, src.path)
        self.readers.append((src, reader))
        n = 0
        for line, rec, problem, bad_bytes in src.events():
            n += 1
            it = self._usable(src.path, reader, line, rec, problem, bad_bytes)
            if it is None:
                continue
            check_encoding(it, self.out)
            self.pii.add(it)
            if self.lengths is not None:
                self.lengths.add(it)
            self.index.add(code, it)
            if self.sample is not None and split == "train":
                self.sample.add(it)
        if n == 0 and not isinstance(data, Rows):
            raise no_rows(src.path)
        self.rows_count[split] = n

    def _usable(self, path: str, reader, line: int, rec, problem, bad_bytes: bool) -> Item | None:
        """The row's item, or None with its findings and the reason --fix drops it."""
        if bad_bytes:
            self.out.get("encoding", "error", "bytes that are not valid UTF-8").add(path, line, reason="invalid UTF-8")
        if problem is not None:
            self.out.get(*INVALID).add(path, line, reason=problem)
            self.drop_reasons[(path, line)] = "invalid_rows"
            return None
        it = reader.item(rec, line, self.out)
        if it is None:
            self.drop_reasons[(path, line)] = "invalid_or_empty"
        return it


def _check_across_rows(scan: _FirstPass) -> None:
    """The checks that compare rows, on the compact index; repeats and leaked train rows are dropped by --fix."""
    cols, out = scan.index.arrays(), scan.out
    preference = scan.shape in PREFERENCE_SHAPES
    if scan.shape == PAIRS:
        for k in ix.check_identical_pairs(cols, out):
            scan.drop_reasons[cols.where(k)] = "identical_pair"
        ix.check_contradicting_pairs(cols, out)
    elif scan.shape == JUDGEMENTS:
        ix.check_contradicting_judgements(cols, out)
        ix.check_label_balance(cols, out)
    repeats = ix.check_duplicates(cols, out, prompts_only=scan.shape == PROMPTS)
    if not preference:  # one prompt with several answers is what preference data holds
        ix.check_conflicts(cols, out)
    leaked = ix.check_exact_leakage(cols, out, all_copies=preference)  # leakage: the same prompt
    ix.report_near(cols, _verify(ix.near_candidates(cols), scan.readers), out)
    if scan.index.labelled:
        ix.check_imbalance(cols, out)
    if scan.sample is not None:
        check_label_noise(scan.sample, out)
    for k in repeats:
        scan.drop_reasons[cols.where(k)] = "duplicate_prompts" if scan.shape == PROMPTS else "duplicates"
    for j in leaked:
        scan.drop_reasons[cols.where(j)] = "leakage"


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
