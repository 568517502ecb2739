"""`tuneline data check`: the data audit without training."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ..tasks import OBJECTIVES, SFT, TASKS, get_task, objective_task
from .app import data_app


@data_app.command("check", epilog="Examples:\n\n  tuneline data check train.jsonl --test test.jsonl --model minilm-l6\n\n  tuneline data check train.csv --text-column body --label-column stars --fix clean/")
def data_check(
    train_file: Path = typer.Argument(..., help="training rows (.jsonl .csv .tsv .parquet or datasets folder)"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="validation rows"),
    test: Optional[Path] = typer.Option(None, "--test", help="test rows"),
    task: Optional[str] = typer.Option(None, "--task", help=f"{' | '.join(TASKS)} (default: from the columns)"),
    objective: str = typer.Option("sft", "--objective", metavar="NAME",
                                  help=f"how the task learns: {' | '.join([SFT, *OBJECTIVES])}; checks its rows "
                                  "(pairs for dpo/simpo/orpo, judgements for kto, prompts for grpo)"),
    model: Optional[str] = typer.Option(None, "--model", help="tokenizer for the too_long check (alias, folder, hub id)"),
    max_length: int = typer.Option(128, "--max-length", help="token limit for the too_long check"),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="the column with the input text "
                                              "(default: found by its name, e.g. text, review, sentence)"),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="the column with the label "
                                               "(default: found by its name, e.g. label, sentiment, intent)"),
    no_label_noise: bool = typer.Option(False, "--no-label-noise", help="skip the cross-validated label check"),
    fix: Optional[Path] = typer.Option(None, "--fix", help="write cleaned copies and dropped.jsonl into this folder"),
    as_json: bool = typer.Option(False, "--json", help="print {rows, findings} as JSON"),
):
    """Audit task data: invalid rows, duplicates, leakage, imbalance, length, PII, label noise... Exit 2 on errors."""
    from ..data.audit import audit, format_table

    paths = {"train": train_file}
    if validation:
        paths["validation"] = validation
    if test:
        paths["test"] = test
    shape = _row_shape(task, objective, train_file)
    tokenizer = None
    if model:
        from ..models import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(model).path)
    result = audit(paths, shape, text_column=text_column, label_column=label_column, tokenizer=tokenizer,
                   max_length=max_length, label_noise=not no_label_noise)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        print(format_table(result))
    if fix is not None:
        from ..data.fix import write_fixed

        written = write_fixed(paths, result, fix)
        print(("" if as_json else "\n") + "Cleaned copies: " + ", ".join(
            f"{v['file']} ({v['kept']} kept, {v['dropped']} dropped)" for v in written.values()), file=sys.stderr)
    if result.errors:
        raise typer.Exit(2)


def _row_shape(task: str | None, objective: str, train_file: Path) -> str:
    """What the audit checks the rows as: the data shape of the task (learning by `objective`),
    else guessed from the columns."""
    if objective != SFT:
        if objective not in OBJECTIVES:
            raise UserError(f"--objective: {objective!r}; allowed: {', '.join([SFT, *OBJECTIVES])}")
        task = task or objective_task(objective)
    if task is None:
        from ..data.audit import guess_shape

        return guess_shape(train_file)
    if task not in TASKS:
        raise UserError(f"--task: {task!r}; allowed: {', '.join(TASKS)}")
    return get_task(task, objective).data_shape
