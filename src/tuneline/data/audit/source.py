"""One split as a stream of lines: (line, record or None, why invalid or None, bad UTF-8).

A path to a JSONL file is read line by line (the lenient reader), so the audit never holds the
file. Rows already in memory (training's splits, or `read_rows(..., lenient=True)`) are replayed
in line order. CSV, Parquet and datasets folders are read whole by `read_rows` for now.
"""

from __future__ import annotations

import heapq
import itertools
from pathlib import Path
from typing import Iterator

from ..columns import HEAD_ROWS
from ..io import JSONL_SUFFIXES, Rows, iter_jsonl_lenient, read_rows

Event = tuple[int, "dict | None", "str | None", bool]


class Source:
    def __init__(self, split: str, data: Rows | str | Path):
        self.split = split
        if isinstance(data, Rows):
            self._rows, self.path = data, data.path
        else:
            p = Path(data)
            streamed = p.is_file() and p.suffix.lower() in JSONL_SUFFIXES
            self._rows = None if streamed else read_rows(p, lenient=True)
            self.path = str(p) if streamed else self._rows.path
        self._head: Rows | None = None

    @property
    def head(self) -> Rows:
        """The first rows, for column and format detection."""
        if self._rows is not None:
            return self._rows
        if self._head is None:
            valid = ((n, rec) for n, rec, _, _ in self.events() if rec is not None)
            self._head = Rows.collect(self.path, itertools.islice(valid, HEAD_ROWS))
        return self._head

    def events(self) -> Iterator[Event]:
        if self._rows is None:
            yield from iter_jsonl_lenient(self.path)
            return
        rows = self._rows
        bad = set(rows.bad_utf8)
        valid = ((n, rec, None, n in bad) for n, rec in zip(rows.lines, rows.records))
        invalid = ((n, None, why, n in bad) for n, why in rows.invalid)
        yield from heapq.merge(valid, invalid, key=lambda e: e[0])
