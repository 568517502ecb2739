"""The tokenised training split as an Arrow file in the cache, read through a memory map.

For data larger than memory. The source file is read row by row (`io.iter_records`), the task
encodes each chunk of rows with one batched tokenizer call, and the chunk is appended to an Arrow
IPC file as one record batch: the file never exists as Python objects. Training then reads a
row's token ids by index from the memory-mapped file; only per-row lengths and lines (and label
codes) are numpy arrays in RAM.

The cache file is keyed by the source (path + SHA-256 of its bytes), the tokenizer (a hash of
its full definition) and every recipe option that changes the encoding, so a second run reuses
it and an edited file or another tokenizer builds a new one (the stale one is removed).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import time
import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

CACHE_VERSION = 1  # bump when the file layout or an encoder changes
CHUNK_ROWS = 8192
TOKENS = pa.list_(pa.int32())


def cache_dir() -> Path:
    from ..models import tuneline_home

    return tuneline_home() / "cache" / "tokens"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides token ids: the fast tokenizer's full JSON definition
    (vocabulary, normaliser, special tokens, post-processor), else the vocabulary."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)  # set per call (max_length is in the key)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.truncation_side, tokenizer.padding_side, tokenizer.all_special_tokens,
                         getattr(tokenizer, "chat_template", None)]).encode())
    return h.hexdigest()


def cache_path(source: Path, file_sha256: str, options: dict) -> Path:
    """<source+options key>-<content key>.arrow: one prefix per file and encoding, so a newer
    version of the file finds and replaces its predecessor."""
    prefix = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "source": str(source), **options},
                                       sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / f"{prefix}-{file_sha256[:20]}.arrow"


@contextmanager
def _locked(path: Path):
    """One builder per cache file: a second process waits, then finds the file built."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class ChunkEncoder:
    """How a task writes rows into the cache: its Arrow columns, and chunk of (line, record) -> columns."""

    schema: pa.Schema
    encode: Callable[[list[tuple[int, dict]]], dict]


def build(out: Path, rows: Iterable[tuple[int, dict]], encoder: ChunkEncoder, meta: dict,
          chunk_rows: int | None = None, workers: int = 1) -> dict:
    """Write the encoder's columns for each chunk of (line, record) as one record batch, plus a
    `line` column; atomic (temporary file, then rename). With workers > 1, chunks are encoded in
    that many processes (this one reads and writes, in order). Returns the metadata written beside it."""
    schema = encoder.schema.append(pa.field("line", pa.int64()))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    t0, n, tokens = time.perf_counter(), 0, 0
    chunks = _chunks(rows, chunk_rows or CHUNK_ROWS)
    batches = (_parallel(chunks, encoder, schema, workers) if workers > 1
               else (_encode(encoder, schema, c) for c in chunks))
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                n += batch.num_rows
                tokens += len(batch.column(0).values)
        seconds = time.perf_counter() - t0
        meta = {**meta, "rows": n, "tokens": tokens, "seconds": round(seconds, 2), "workers": workers,
                "rows_per_s": round(n / seconds, 1) if seconds > 0 else None, "bytes": tmp.stat().st_size,
                "created": time.time()}
        tmp.replace(out)
    finally:
        batches.close()  # stops the worker pool on an error
        tmp.unlink(missing_ok=True)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return meta


def _chunks(rows: Iterable[tuple[int, dict]], size: int) -> Iterator[list[tuple[int, dict]]]:
    chunk: list[tuple[int, dict]] = []
    for item in rows:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encode(encoder: ChunkEncoder, schema: pa.Schema, chunk: list[tuple[int, dict]]) -> pa.RecordBatch:
    cols = encoder.encode(chunk)
    cols["line"] = [line for line, _ in chunk]
    return pa.record_batch([_tokens_array(cols[f.name]) if f.type == TOKENS else pa.array(cols[f.name], type=f.type)
                            for f in schema], schema=schema)


def _tokens_array(lists: list[list[int]]) -> pa.ListArray:
    # flat values + offsets: ~30x faster than pa.array on nested lists (as slow as the tokenizer)
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int32, count=len(lists)), out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


_WORKER_JOB: tuple[ChunkEncoder, pa.Schema] | None = None  # set before the pool forks, read in workers


def _encode_in_worker(chunk: list[tuple[int, dict]]) -> pa.RecordBatch:
    return _encode(*_WORKER_JOB, chunk)


def _parallel(chunks: Iterator[list], encoder: ChunkEncoder, schema: pa.Schema, workers: int) -> Iterator[pa.RecordBatch]:
    """Encoded chunks in order, from forked worker processes (they inherit the encoder and its
    tokenizer, so nothing but rows and record batches crosses between processes). A few chunks
    per worker are in flight, so memory stays bounded."""
    global _WORKER_JOB
    _WORKER_JOB = (encoder, schema)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_encode_in_worker, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _WORKER_JOB = None


def default_workers(path: Path) -> int:
    """Processes for tokenising: all usable cores but one (this process reads and writes; at most
    8) for files over 64 MiB on machines with 4+ cores. Below that, starting workers and shipping
    rows costs about what it saves (measured on 2 shared cores: no gain from 2 workers)."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores - 1, 8) if size > (64 << 20) and cores >= 4 else 1


def build_once(out: Path, make: Callable[[], dict]) -> tuple[dict, bool]:
    """The cache's metadata, building it with `make()` unless a complete file exists.
    Returns (metadata, built now). Older versions of the same source and options are removed."""
    with _locked(out):
        meta_file = out.with_suffix(".json")
        if out.exists() and meta_file.exists():
            return json.loads(meta_file.read_text()), False
        meta = make()
        prefix = out.name.split("-")[0]
        for old in out.parent.glob(f"{prefix}-*"):
            if old.stem != out.stem and old.suffix in (".arrow", ".json", ".lock"):
                old.unlink(missing_ok=True)
        return meta, True


class TokenFile:
    """An opened cache file: the table lives in the memory map (zero-copy)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads(self.path.with_suffix(".json").read_text())
        self._map = pa.memory_map(str(self.path), "r")
        self.table = pa.ipc.open_file(self._map).read_all()
        self.lines = self.table.column("line").to_numpy()
        self._columns: dict[str, _ListColumn] = {}
        self._codes: dict[str, tuple[np.ndarray, list[str]]] = {}

    def __len__(self) -> int:
        return self.table.num_rows

    def tokens(self, name: str) -> "_ListColumn":
        if name not in self._columns:
            self._columns[name] = _ListColumn(self.table.column(name))
        return self._columns[name]

    def numpy(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy()

    def codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        """A string column as (codes into the sorted distinct values, those values)."""
        import pyarrow.compute as pc

        if name not in self._codes:
            col = self.table.column(name)
            values = sorted(pc.unique(col).to_pylist())
            self._codes[name] = pc.index_in(col, value_set=pa.array(values, type=col.type)).to_numpy(), values
        return self._codes[name]


class _ListColumn:
    """A list<int32> column as numpy views of each record batch's offsets and values."""

    def __init__(self, column: pa.ChunkedArray):
        self.offsets = [c.offsets.to_numpy() for c in column.chunks]
        self.values = [c.values.to_numpy() for c in column.chunks]
        sizes = [len(c) for c in column.chunks]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.lengths = (np.concatenate([np.diff(o) for o in self.offsets]) if self.offsets
                        else np.zeros(0, np.int64)).astype(np.int64)

    def row(self, r: int) -> list[int]:
        k = int(np.searchsorted(self.starts, r, side="right")) - 1
        j = r - self.starts[k]
        off = self.offsets[k]
        return self.values[k][off[j]:off[j + 1]].tolist()


class TokenColumn:
    """Token-id lists of some rows of a cache file, read by index: `col[i]` is a list of ints,
    like the in-memory encodings' lists, so collate functions work on either. `+ list` appends
    rows held in memory (replay rows)."""

    def __init__(self, column: _ListColumn, rows: np.ndarray, extra: list[list[int]] | None = None):
        self.column, self.rows, self.extra = column, np.asarray(rows, dtype=np.int64), extra or []

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def __getitem__(self, i: int) -> list[int]:
        i = int(i)
        if i >= len(self.rows):
            return self.extra[i - len(self.rows)]
        return self.column.row(int(self.rows[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __add__(self, other: list[list[int]]) -> "TokenColumn":
        return TokenColumn(self.column, self.rows, self.extra + list(other))

    @property
    def lengths(self) -> np.ndarray:
        own = self.column.lengths[self.rows]
        return np.concatenate([own, [len(x) for x in self.extra]]).astype(np.int64) if self.extra else own


class WhereColumn:
    """"file:line" of some rows of a cache file, made when asked (`+ list` appends strings)."""

    def __init__(self, path: str, lines: np.ndarray, extra: list[str] | None = None):
        self.path, self.lines, self.extra = path, lines, extra or []

    def __len__(self) -> int:
        return len(self.lines) + len(self.extra)

    def __getitem__(self, i: int) -> str:
        i = int(i)
        if i >= len(self.lines):
            return self.extra[i - len(self.lines)]
        return f"{self.path}:{int(self.lines[i])}"

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __add__(self, other: list[str]) -> "WhereColumn":
        return WhereColumn(self.path, self.lines, self.extra + list(other))


def row_lengths(input_ids) -> "list[int] | np.ndarray":
    """Lengths of an encoding's rows: a numpy array for cache-backed rows, else a list."""
    if isinstance(input_ids, TokenColumn):
        return input_ids.lengths
    return [len(x) for x in input_ids]
