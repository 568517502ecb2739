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


@models_app.command("info")
def models_info(
    name: str = typer.Argument(..., help="catalog alias, local folder, .gguf file or hub id"),
    batch: int = typer.Option(8, "--batch", min=1, help="batch size for the memory estimate"),
    length: int = typer.Option(512, "--length", min=8, help="sequence length for the memory estimate"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (activations)"),
    lora_r: int = typer.Option(8, "--lora-r", min=1, help="LoRA rank for the estimate"),
    task: str = typer.Option(None, "--task", help="classify | generate (default: from the architecture)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Architecture, parameters, context length, chat template, license and estimated training memory."""
    from .model_info import format_info, model_info

    if precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--precision: {precision!r}; allowed: fp32, bf16, fp16")
    info = model_info(name, batch=batch, length=length, precision=precision, lora_r=lora_r, task=task)
    print(json.dumps(info, indent=2) if as_json else format_info(info))
