"""`tuneline tune`: hyperparameter search over the recipe's `search:` section."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import app


@app.command("tune")
def tune(
    recipe: Path = typer.Argument(..., help="recipe YAML file with a search: section"),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", min=1,
                                         help="trials in the study (default: search.trials); a resumed study runs up to it"),
    timeout: Optional[str] = typer.Option(None, "--timeout", metavar="DURATION", help="start no trial after this long, e.g. 2h, 90m, 1h30m"),
    budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", min=0.01,
                                                   help="hard time budget: no trial starts that cannot finish in it, "
                                                        "a running one is stopped at its end"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="trials run at once, each in its own process with its share of the cores"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="study folder (default: <recipe output>-tune)"),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe key, e.g. --set data.max_rows=2000 (repeatable)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start the study afresh, deleting the old one"),
    force: bool = typer.Option(False, "--force", help="train even when the data audit finds errors"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the search, time a few steps, say how many trials fit; "
                                                         "writes nothing"),
):
    """Search hyperparameters: every trial is a run in the study folder; resumes after an interruption;
    ends with the best recipe, a summary and a report."""
    from ..tune.budget import parse_duration
    from ..tune.search import run_search

    run_search(recipe, overrides=set_, trials=trials,
               timeout_seconds=parse_duration(timeout) if timeout else None,
               budget_seconds=budget_minutes * 60 if budget_minutes else None, nproc=nproc, output=output,
               overwrite=overwrite, force=force, dry=dry_run)
