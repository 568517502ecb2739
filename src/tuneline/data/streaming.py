"""Training data larger than memory: when to stream, and the training split as positions in a
token cache (data/token_cache.py) instead of Rows of Python dicts.

`data.streaming: auto` streams when the training file is larger than 256 MiB or holds more than
200,000 rows; small files keep the in-memory path (no cache, no second pass). Streamed, the
pipeline sees a `StreamedRows`: it has a length, a path and `subset` (so data/split.py holds out
validation/test rows by position), but no records. Held-out rows and the audit's sample are read
back from the source file in one pass: they are a small share, and evaluation needs their text.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from . import token_cache
from .columns import HEAD_ROWS
from .io import Rows, count_rows, head_rows, iter_records, no_rows

STREAM_BYTES = 256 << 20
STREAM_ROWS = 200_000
AUDIT_SAMPLE_ROWS = 20_000  # training rows the pre-training audit reads when the file is streamed


def use_streaming(data, path: Path) -> bool:
    """`data.streaming` resolved for this training file."""
    if isinstance(data.streaming, bool):
        return data.streaming
    if data.max_rows and data.max_rows <= STREAM_ROWS:
        return False
    path = Path(path)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    if size > STREAM_BYTES:
        return True
    if size < STREAM_ROWS * 16:  # cannot hold that many rows of any use
        return False
    return count_rows(path, stop_at=STREAM_ROWS) > STREAM_ROWS


def encoding_options(recipe, task) -> dict:
    """Every recipe value that changes what the cache holds (part of its key)."""
    d = recipe.data
    return {"task": recipe.task, "text_column": d.text_column, "label_column": d.label_column,
            "format": d.format, "max_rows": d.max_rows, "max_length": recipe.train.max_length,
            **task.encoding_options(recipe)}


class StreamedRows:
    """Rows of a streamed file, as positions into its token cache (what split.py and the task
    need of Rows before encoding; the records stay in the file)."""

    def __init__(self, source: Path, file: token_cache.TokenFile, positions: np.ndarray, path: str):
        self.source, self.file, self.positions, self.path = Path(source), file, np.asarray(positions), path

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def lines(self) -> np.ndarray:
        return self.file.lines[self.positions]

    def subset(self, idx, path: str | None = None) -> "StreamedRows":
        return StreamedRows(self.source, self.file, self.positions[np.asarray(idx, dtype=np.int64)], path or self.path)

    def label_codes(self) -> tuple[np.ndarray, list[str]]:
        """Classify: each row's label as a code into the file's sorted distinct labels."""
        codes, values = self.file.codes("label")
        return codes[self.positions], values

    def strata(self):
        """Labels to stratify a split by: codes ordered as the label strings sort, so the split
        equals the in-memory path's (sklearn orders classes by value)."""
        return self.label_codes()[0] if "label" in self.file.table.column_names else None


def open_train(path: Path, file_sha256: str, recipe, task, tokenizer) -> StreamedRows:
    """The training file's token cache, built on first use (row by row, encoded in chunks)."""
    # first: it picks the columns (an error names them now) and may give the tokenizer a chat template
    encoder = task.stream_encoder(head_rows(path, HEAD_ROWS), recipe, tokenizer)
    options = {**encoding_options(recipe, task), "tokenizer": token_cache.tokenizer_fingerprint(tokenizer)}
    out = token_cache.cache_path(path, file_sha256, options)

    def make() -> dict:
        rows = iter_records(path)
        if recipe.data.max_rows:
            rows = itertools.islice(rows, recipe.data.max_rows)
        print(f"Data: tokenising {path.name} into the token cache (streaming) ...", flush=True)
        workers = recipe.data.num_proc or token_cache.default_workers(path)
        return token_cache.build(out, rows, encoder, {"source": str(path), "sha256": file_sha256, "options": options},
                                 workers=workers)

    meta, built = token_cache.build_once(out, make)
    if built:
        print(f"Data: {meta['rows']:,} rows, {meta['tokens']:,} tokens tokenised in {meta['seconds']:.1f} s "
              f"({meta['rows_per_s']:,.0f} rows/s, {meta['workers']} processes); cache {meta['bytes'] / 2**20:.0f} MiB: {out}", flush=True)
    else:
        print(f"Data: {meta['rows']:,} rows from the token cache {out}", flush=True)
    file = token_cache.TokenFile(out)
    if not len(file):
        raise no_rows(path)
    return StreamedRows(path, file, np.arange(len(file)), str(path))


def materialise(parts: dict, train: StreamedRows, audit_rows: int = AUDIT_SAMPLE_ROWS) -> tuple[dict, Rows]:
    """Held-out splits cut from a streamed file, as Rows, and a sample of the training rows for
    the audit: all read in one pass over the source. Returns (parts with Rows, audit sample)."""
    views = {name: v for name, v in parts.items() if isinstance(v, StreamedRows)}
    views["__audit__"] = train.subset(np.arange(min(audit_rows, len(train))))
    wanted = {name: v.lines for name, v in views.items()}
    records = dict(iter_records(train.source, only=set(np.concatenate(list(wanted.values())).tolist())))
    out = dict(parts)
    for name, lines in wanted.items():
        out[name] = Rows.collect(views[name].path, ((n, records[n]) for n in lines.tolist()))
    return out, out.pop("__audit__")
