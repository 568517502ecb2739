"""Commands of the watch feature: `tuneline diagnose RUN` and `tuneline models info NAME`.
Registered on the main app by one import in cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from .cli import app, models_app
from .errors import UserError


@app.command()
def diagnose(
    run: Path = typer.Argument(..., help="run folder (finished, failed or still running)"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as JSON"),
):
    """Read a run's curves: best step, overfitting (validation worse while training improves), no learning."""
    from .diagnose import diagnose_run, format_findings
    from .recipe import recipe_from_dict
    from .runs import RunDir
    from .tasks import get_task

    rd = RunDir(run)
    if not rd.recipe.exists():
        raise UserError(f"{run}: not a run folder (recipe.yaml missing)")
    recipe = recipe_from_dict(yaml.safe_load(rd.recipe.read_text()), str(rd.recipe))
    findings = diagnose_run(rd, recipe, get_task(recipe.task))
    diverged = rd.read_manifest().get("diverged")
    if diverged:
        findings.insert(0, {"check": "divergence", "severity": "error", "step": diverged["step"],
                            "message": f"training diverged at step {diverged['step']}: {diverged['reason']}",
                            "advice": "lower train.lr or raise train.warmup_ratio"})
    print(json.dumps(findings, indent=2) if as_json else format_findings(findings))
