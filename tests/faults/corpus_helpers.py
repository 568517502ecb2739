"""Shared by the faults suite: run the CLI in-process, snapshot a folder byte for byte."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (sha256) and folder under `folder`: equal snapshots mean nothing was touched or added."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """`tuneline ARGV` in this process (60 interpreters would cost minutes): exit code, stdout, stderr."""
    from tuneline.cli import main

    monkeypatch.setattr(sys, "argv", ["tuneline", *map(str, argv)])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # an escaped exception is a traceback for the user
        out = capsys.readouterr()
        pytest.fail(f"tuneline {' '.join(map(str, argv))} raised {type(e).__name__}: {e}\n{out.err}")
    out = capsys.readouterr()
    return code, out.out, out.err
