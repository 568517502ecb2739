"""Read rows from JSONL, CSV, Parquet or a `datasets.save_to_disk` folder.

Every row keeps where it came from (file, line) so later errors can point at it. Each format is
read one row at a time (`iter_records`); `read_rows` collects the rows of a whole file, `head_rows`
the first ones, `read_rows_at` chosen lines.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import UserError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass
class Rows:
    """Rows of one file, with the line each came from (1-based; row index for Parquet/Arrow)."""

    path: str
    records: list[dict[str, Any]]
    lines: list[int]
    columns: list[str] = field(default_factory=list)
    # lenient reads (the data audit) collect what strict reads reject: (line, reason)
    invalid: list[tuple[int, str]] = field(default_factory=list)
    bad_utf8: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}"

    @classmethod
    def collect(cls, path: str | Path, numbered: Iterable[tuple[int, dict]]) -> "Rows":
        """Rows from (line, record) pairs; the columns in the order they first appear."""
        records, lines, cols = [], [], {}
        for n, rec in numbered:
            records.append(rec)
            lines.append(n)
            cols.update(dict.fromkeys(rec))
        return cls(str(path), records, lines, list(cols))

    def subset(self, idx: list[int], path: str | None = None) -> "Rows":
        return Rows(path or self.path, [self.records[i] for i in idx], [self.lines[i] for i in idx], self.columns)


def existing_file(value: str, base_dir: Path | None, key: str, advice: str) -> Path:
    """A file a recipe key names, relative to the recipe's folder when it is there; else a UserError
    with `advice` (what the key wants)."""
    p = Path(value)
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if not p.is_file():
        raise UserError(f"{key}: {value}: file not found; {advice}")
    return p


def resolve_data_path(value: str, base_dir: Path | None, key: str) -> Path:
    """Data paths in a recipe are relative to the recipe's folder, else to the working directory."""
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else ([base_dir / p] if base_dir else []) + [Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    tried = " or ".join(dict.fromkeys(str(c) for c in candidates))  # the recipe's folder may be the working one
    raise UserError(f"{key}: data file {value!r} not found (looked at {tried})")


def read_rows(path: str | Path, lenient: bool = False) -> Rows:
    """Strict (training): the first bad line is a UserError. Lenient (audit): bad lines of a JSONL
    file are collected in `invalid` / `bad_utf8` and reading goes on."""
    path = Path(path)
    if lenient and path.is_file() and path.suffix.lower() in JSONL_SUFFIXES:
        rows = _read_jsonl_lenient(path)
    else:
        rows = Rows.collect(path, iter_records(path))
    if not rows.records and not rows.invalid:
        raise no_rows(path)
    return rows


def iter_records(path: str | Path, only: set[int] | None = None, batch_rows: int = 4096) -> Iterator[tuple[int, dict]]:
    """(line, record) for every row, read strictly and one at a time: the file is never held in
    memory. `line` is what `Rows.lines` holds (row number for Parquet and datasets folders).
    With `only`, just those lines are returned (JSONL skips the others without decoding them)."""
    path = Path(path)
    if path.is_dir():
        yield from _iter_datasets_folder(path, only, batch_rows)
        return
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path, only)
    elif suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, "\t" if suffix == ".tsv" else ",", only)
    elif suffix == ".parquet":
        yield from _iter_parquet(path, only, batch_rows)
    else:
        raise UserError(f"{path}: unknown data format {suffix!r}; use .jsonl, .csv, .tsv, .parquet or a datasets folder")


def head_rows(path: str | Path, n: int) -> Rows:
    """The first n rows as Rows (column detection, audit samples)."""
    rows = Rows.collect(path, itertools.islice(iter_records(path), n))
    if not rows.records:
        raise no_rows(path)
    return rows


def read_rows_at(path: str | Path, lines) -> Rows:
    """Only the rows at these lines, in file order: held-out splits of a file too large to read whole."""
    return Rows.collect(path, iter_records(path, only={int(x) for x in lines}))


def no_rows(path: str | Path) -> UserError:
    return UserError(f"{path}: no rows (the file is empty or holds only blank lines or a header); "
                     "give a file with one row per line")


def _iter_jsonl(path: Path, only: set[int] | None = None) -> Iterator[tuple[int, dict]]:
    """(line, object) per row, strictly; with `only`, the other lines are skipped undecoded."""
    _refuse_binary(path)
    # bytes, decoded line by line: a bad byte is reported with its line, not a file offset
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if only is not None and n not in only:
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not UTF-8 text ({e.reason} at column {e.start + 1}); "
                                "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                msg = e.msg.removesuffix(" at")  # "Invalid control character at"
                raise UserError(f"{path}:{n}: not valid JSON ({msg} at column {e.colno}); each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}; "
                                "JSON Lines files hold one JSON object per line, e.g. {\"text\": ..., \"label\": ...}")
            yield n, obj


# Magic bytes of files that are not text at all: say what the file is instead of "bad byte".
_BINARY_KINDS = (
    (b"\x1f\x8b", "gzip-compressed; decompress it first (gunzip)"),
    (b"PK\x03\x04", "a ZIP archive (or an .xlsx/.docx file); export the rows as .jsonl or .csv"),
    (b"\xff\xfe\x00\x00", "UTF-32 text; save it as UTF-8"),
    (b"\x00\x00\xfe\xff", "UTF-32 text; save it as UTF-8"),
    (b"\xff\xfe", "UTF-16 text; save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text; save it as UTF-8"),
    (b"\x89PNG", "a PNG image, not rows of text"),
    (b"%PDF", "a PDF document, not rows of text"),
    (b"PAR1", "a Parquet file; give it the .parquet extension"),
)


def _refuse_binary(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(4)
    for magic, what in _BINARY_KINDS:
        if head.startswith(magic):
            raise UserError(f"{path}:1: this file is {what}")


def _first_bad_utf8_line(path: Path) -> tuple[int, UnicodeDecodeError]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return n, e
    raise AssertionError("no undecodable line")  # pragma: no cover - only called after a decode error


def _read_jsonl_lenient(path: Path) -> Rows:
    invalid, bad_utf8 = [], []

    def valid():
        for n, obj, problem, bad_bytes in iter_jsonl_lenient(path):
            if bad_bytes:
                bad_utf8.append(n)
            if problem is not None:
                invalid.append((n, problem))
            else:
                yield n, obj

    rows = Rows.collect(path, valid())
    rows.invalid, rows.bad_utf8 = invalid, bad_utf8
    return rows


def iter_jsonl_lenient(path: str | Path):
    """(line, object or None, why the line is invalid or None, had bad UTF-8) for each non-blank
    line, one at a time (the audit streams files larger than memory through it)."""
    with Path(path).open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            bad_bytes = False
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_bytes = True
                line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"not valid JSON ({e.msg} at column {e.colno})", bad_bytes
                continue
            if not isinstance(obj, dict):
                yield n, None, f"a JSON {type(obj).__name__}, not an object", bad_bytes
                continue
            yield n, obj, None, bad_bytes


# csv's default field limit (128 KiB) rejects long documents; a row is read into memory anyway.
_CSV_FIELD_LIMIT = 64 << 20


def _iter_csv(path: Path, delimiter: str, only: set[int] | None = None) -> Iterator[tuple[int, dict]]:
    """(line, record) per row, strictly; `line` is the row's last physical line (quoted newlines)."""
    _refuse_binary(path)
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = None
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            if not header:
                raise UserError(f"{path}:1: no header row; the first line must name the columns")
            for rec in reader:
                n = reader.line_num
                if only is not None and n not in only:
                    continue
                if None in rec:
                    raise UserError(f"{path}:{n}: more fields than the header has ({len(header)}); quote fields that contain {delimiter!r}")
                if any(v is None for v in rec.values()):
                    raise UserError(f"{path}:{n}: fewer fields than the header has ({len(header)})")
                yield n, dict(rec)
    except csv.Error as e:
        where = f"{path}:{reader.line_num}" if reader is not None and reader.line_num else str(path)
        raise UserError(f"{where}: malformed CSV: {e}; check the quoting around this line") from None
    except UnicodeDecodeError:
        n, e = _first_bad_utf8_line(path)
        raise UserError(f"{path}:{n}: not UTF-8 text ({e.reason} at column {e.start + 1}); save the file as UTF-8") from None


def _load_datasets_folder(path: Path):
    # save_to_disk folders hold Arrow files and JSON metadata: nothing is unpickled.
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise UserError(f"{path}: a folder must be a `datasets.save_to_disk` folder (dataset_info.json missing)")
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{path}: cannot load the datasets folder ({str(e).splitlines()[0][:200]}); save it again "
                        "with Dataset.save_to_disk, or give the rows as .jsonl") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return ds


def _iter_parquet(path: Path, only: set[int] | None, batch_rows: int) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        start = 1
        for batch in batches:
            for i, rec in enumerate(batch.to_pylist()):
                if only is None or start + i in only:
                    yield start + i, rec
            start += batch.num_rows
    except UserError:
        raise
    except Exception as e:  # pyarrow raises several types for a broken file
        raise UserError(f"{path}: cannot read Parquet ({str(e).splitlines()[0][:200]}); the file is damaged or "
                        "not Parquet: write it again, or give the rows as .jsonl / .csv") from None


def _iter_datasets_folder(path: Path, only: set[int] | None, batch_rows: int) -> Iterator[tuple[int, dict]]:
    ds = _load_datasets_folder(path)
    start = 1
    for table in ds.with_format("arrow").iter(batch_size=batch_rows):
        for i, rec in enumerate(table.to_pylist()):
            if only is None or start + i in only:
                yield start + i, rec
        start += table.num_rows


def count_rows(path: str | Path, stop_at: int | None = None) -> int:
    """Rows in a file without parsing them (JSONL/CSV: non-blank lines; Parquet/datasets: metadata).
    Counting stops past `stop_at`: deciding "more than N" needs no more."""
    path = Path(path)
    if path.is_dir():
        return len(_load_datasets_folder(path))
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:
            return 0  # unreadable: the strict reader reports it
    n = 0
    with path.open("rb") as f:
        for raw in f:
            n += bool(raw.strip())
            if stop_at is not None and n > stop_at:
                break
    return n - (path.suffix.lower() in (".csv", ".tsv"))  # the header


def file_sha256(path: str | Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_jsonl(path: Path, records: list[dict]) -> None:
    from ..runs import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
