"""`tuneline data check --fix OUT_DIR`: cleaned copies of the input files and a log of every dropped line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import UserError
from ..runs import FILE_MODE, atomic_write_text
from .audit.source import Source


def write_fixed(paths: dict[str, Path], result, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    inputs = {Path(p).resolve() for p in paths.values()}
    written, log = {}, []
    for split, path in paths.items():
        target = out_dir / f"{Path(path).stem}.jsonl"
        if target.resolve() in inputs:
            raise UserError(f"--fix {out_dir}: would overwrite the input {target}; choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        src = Source(split, path)
        drop = result.drop.get(src.path, set())
        target = out_dir / f"{Path(path).stem}.jsonl"
        kept = dropped = 0
        # streamed into a temporary file beside the target, moved into place when complete
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)  # the user's umask, like any file they write
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for line, rec, _, _ in src.events():
                    if line in drop or rec is None:
                        dropped += 1
                        log.append({"file": src.path, "line": line,
                                    "check": result.drop_reasons.get((src.path, line), "invalid_rows")})
                        continue
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    kept += 1
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        written[split] = {"file": str(target), "kept": kept, "dropped": dropped}
    atomic_write_text(out_dir / "dropped.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    return written
