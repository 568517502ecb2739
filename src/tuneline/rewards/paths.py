"""Paths inside grader definitions (a judge's `model` folder, a python grader's `.py` file),
made absolute against the recipe's folder when they exist there: the run's saved recipe and a
later `tuneline evaluate` from another folder then find them."""

from __future__ import annotations

from pathlib import Path

from .spec import is_source_file


def resolve_paths(specs: list[dict], base_dir: Path | None) -> list[dict]:
    return [_resolved(s, base_dir) for s in specs]


def _resolved(spec: dict, base_dir: Path | None) -> dict:
    out = dict(spec)
    if isinstance(out.get("graders"), dict):  # multi
        out["graders"] = {k: _resolved(v, base_dir) for k, v in out["graders"].items()}
    if isinstance(out.get("model"), str):
        out["model"] = _absolute(out["model"], base_dir)
    if out.get("type") == "python" and isinstance(out.get("source"), str) and is_source_file(out["source"]):
        out["source"] = _absolute(out["source"].strip(), base_dir)
    return out


def _absolute(value: str, base_dir: Path | None) -> str:
    p = Path(value).expanduser()
    if p.is_absolute() or base_dir is None or not (base_dir / p).exists():
        return value  # an alias, a hub id, or a path relative to the working folder
    return str((base_dir / p).resolve())
