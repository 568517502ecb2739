"""`tuneline version`."""

from __future__ import annotations

from .app import app


@app.command()
def version():
    """Print the tuneline version."""
    from .. import __version__

    print(__version__)
