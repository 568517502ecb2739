"""The command line. Thin: parse, call the API, print.

Every command module registers its commands with decorators on the Typer objects of
`cli/app.py`; importing them here is what puts them on the command line.
"""

from __future__ import annotations

from . import train, tune, data, runs, export, models, serve, version  # noqa: F401  (register their commands, in help order)
from .app import app, main

__all__ = ["app", "main"]
