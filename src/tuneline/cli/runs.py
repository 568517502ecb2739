"""Commands on a finished run folder: evaluate, predict, chat, report, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .app import app


@app.command(epilog="Example:  tuneline evaluate runs/reviews --data other_test.jsonl --json")
def evaluate(
    run: Path = typer.Argument(..., help="run folder"),
    data: Optional[Path] = typer.Option(None, "--data", help="rows to evaluate on (default: the run's test split)"),
    as_json: bool = typer.Option(False, "--json", help="print the eval.json object"),
):
    """Evaluate a finished run against the baseline."""
    from ..reporting.tables import metrics_table
    from ..inference import load_run

    result = load_run(run).evaluate(data)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(metrics_table(result))


@app.command(epilog="Examples:\n\n  tuneline predict runs/reviews -t 'Arrived broken.' --json\n\n  tuneline predict runs/reviews -i reviews.txt")
def predict(
    run: Path = typer.Argument(..., help="run folder"),
    text: List[str] = typer.Option([], "--text", "-t", help="input text (repeatable)"),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i", help="file of rows (.jsonl/.csv/.parquet) or plain lines (.txt)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per input"),
):
    """Predict with a finished run."""
    from ..inference import load_run

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
    from ..data.columns import TEXT_COLUMNS
    from ..data.io import read_rows

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


CHAT_HELP = "Commands: /reset clears the history, /help shows this, /exit (or Ctrl-D) quits."


@app.command()
def chat(
    run: Path = typer.Argument(..., help="run folder of a generate task"),
    max_new_tokens: Optional[int] = typer.Option(None, help="answer length cap (default: the recipe's)"),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default: the recipe's)"),
):
    """Chat with a tuned model in the terminal. /reset clears the history, /exit (or Ctrl-D) quits."""
    from ..inference import load_run

    loaded = load_run(run)
    if "chat" not in loaded.task.serves:
        raise UserError(f"{run}: chat needs a run of task generate (this one is {loaded.info['task']})")
    options = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("temperature", temperature)) if v is not None}
    history: list[dict] = []
    print("Chatting with the tuned model. " + CHAT_HELP, flush=True)
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
        if text.startswith("/"):  # a command, never a question for the model
            known = text in ("/help", "/?")
            print(("" if known else f"(unknown command {text}) ") + CHAT_HELP, flush=True)
            continue
        history.append({"role": "user", "content": text})
        answer = loaded.generate(history, **options)
        history.append({"role": "assistant", "content": answer})
        print(f"bot> {answer}", flush=True)


@app.command()
def report(run: Path = typer.Argument(..., help="run folder")):
    """Rebuild a run's report.html and MODEL_CARD.md from the files in its folder."""
    from ..reporting.model_card import write_model_card
    from ..reporting.report import write_report
    from ..runs import RunDir

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
    from ..reporting.compare import comparison, text_table, warnings, write_html

    if len(runs) < 2:
        raise UserError("compare: give two or more run folders")
    names, rows = comparison(runs)
    print(text_table(names, rows))
    for w in warnings(rows):
        print(f"note: {w}")
    write_html(names, rows, out)
    print(f"\nComparison: {out}")


@app.command()
def diagnose(
    run: Path = typer.Argument(..., help="run folder (finished, failed or still running)"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as JSON"),
):
    """Read a run's curves: best step, overfitting (validation worse while training improves), no learning."""
    from ..training.diagnose import diagnose_run, format_findings
    from ..runs import RunDir
    from ..tasks import task_of

    rd = RunDir(run)
    if not rd.recipe.exists():
        raise UserError(f"{run}: not a run folder (recipe.yaml missing)")
    recipe = rd.load_recipe()
    findings = diagnose_run(rd, recipe, task_of(recipe))
    diverged = rd.read_manifest().get("diverged")
    if diverged:
        findings.insert(0, {"check": "divergence", "severity": "error", "step": diverged["step"],
                            "message": f"training diverged at step {diverged['step']}: {diverged['reason']}",
                            "advice": "lower train.lr or raise train.warmup_ratio"})
    print(json.dumps(findings, indent=2) if as_json else format_findings(findings))
