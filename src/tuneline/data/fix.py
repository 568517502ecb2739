"""`tuneline data check --fix OUT_DIR`: cleaned copies of the input files and a log of every dropped line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..runs import atomic_write_text
from .io import read_rows


def write_fixed(paths: dict[str, Path], result, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    inputs = {p.resolve() for p in paths.values()}
    written, log = {}, []
    for split, path in paths.items():
        target = out_dir / f"{Path(path).stem}.jsonl"
        if target.resolve() in inputs:
            raise UserError(f"--fix {out_dir}: would overwrite the input {target}; choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        rows = read_rows(path, lenient=True)
        drop = result.drop.get(rows.path, set())
        kept = [r for r, line in zip(rows.records, rows.lines) if line not in drop]
        for line in sorted(drop):
            log.append({"file": rows.path, "line": line, "check": result.drop_reasons.get((rows.path, line), "?")})
        target = out_dir / f"{Path(path).stem}.jsonl"
        atomic_write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        written[split] = {"file": str(target), "kept": len(kept), "dropped": len(rows.records) + len(rows.invalid) - len(kept)}
    atomic_write_text(out_dir / "dropped.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    return written
