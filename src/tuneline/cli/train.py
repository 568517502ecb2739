"""`tuneline train`: one recipe, one run folder (optionally several processes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .app import app


@app.command(epilog="Examples:\n\n  tuneline train examples/reviews/recipe.yaml\n\n  tuneline train r.yaml --set method=lora --set train.lr=1e-3 -o runs/r-lora\n\n  tuneline train r.yaml --dry-run")
def train(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe key, e.g. --set train.lr=3e-5 (repeatable)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="run folder (default: recipe's output or runs/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last checkpoint"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run folder"),
    force: bool = typer.Option(False, "--force", help="train even when the data audit finds errors"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (rows, tokens, steps, parameters, "
                                 "measured speed, estimated time and peak memory) and stop; writes nothing"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="data-parallel processes on this machine (torchrun; "
                              "gloo on CPU, NCCL on GPU); train.batch_size stays the global batch"),
):
    """Fine-tune a model as the recipe says; ends with test metrics next to the baseline."""
    from ..training import distributed
    from ..training.pipeline import train as run_train

    if distributed.launched():
        if nproc > 1 and distributed.is_main() and nproc != distributed.world()[1]:
            print(f"--nproc {nproc} ignored: torchrun started {distributed.world()[1]} processes", flush=True)
    elif nproc > 1 and not dry_run:
        argv = sys.argv[1:]
        i = next(i for i, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
        del argv[i:i + (1 if "=" in argv[i] else 2)]
        return distributed.launch(argv, nproc, sharded=_sharding(recipe, set_) == "fsdp")

    run_train(recipe, overrides=set_, output=output, resume=resume, overwrite=overwrite, force=force,
              dry_run=dry_run)


def _sharding(recipe: Path, overrides: list[str]) -> str | None:
    """train.sharding, read before the relaunch; a bad recipe is reported by the processes themselves."""
    from ..recipe import load_recipe

    try:
        return load_recipe(recipe, overrides)[0].train.sharding
    except UserError:
        return None
