"""`tuneline compare RUN_A RUN_B ...`: recipes and metrics side by side, in the terminal and as HTML."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import yaml

from . import plots
from .page import NOT_A_SCORE, STYLE, img, read_json
from ..evaluation.direction import lower_is_better
from .tables import cell
from ..errors import UserError
from ..runs import RunDir, atomic_write_text
from ..tasks import get_task
from ..training.trackers import flatten


def comparison(paths: list[Path]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(run names, rows of (label, one cell per run)): recipe keys that differ, then metrics."""
    runs = []
    for p in paths:
        run = RunDir(p)
        if not run.manifest.exists():
            raise UserError(f"{p}: not a run folder (run.json missing)")
        recipe = yaml.safe_load(run.recipe.read_text()) if run.recipe.exists() else {}
        runs.append((run, flatten(recipe or {}), run.read_manifest(), read_json(run.eval_file, {})))
    tasks = {(m.get("task"), m.get("objective")) for _, _, m, _ in runs}
    rows: list[tuple[str, list[str]]] = []
    keys = sorted({k for _, r, _, _ in runs for k in r})
    for k in keys:
        vals = [r.get(k) for _, r, _, _ in runs]
        if len({repr(v) for v in vals}) > 1:
            rows.append((f"recipe {k}", [_setting(v) for v in vals]))
    # each headline metric once, though runs of two tasks both have a loss
    for k in dict.fromkeys(k for t in sorted((t for t in tasks if t[0]), key=str) for k in get_task(*t).headline_metrics):
        rows.append((f"test {k} (tuned)", [cell(e.get("tuned", {}).get(k)) for *_, e in runs]))
        rows.append((f"test {k} (baseline)", [cell(e.get("baseline", {}).get(k)) for *_, e in runs]))
    rows.append(("forgetting (ppl change)", [
        f"{100 * e['forgetting']['relative_change']:+.1f} %" if (e.get("forgetting") or {}).get("measured") else "-"
        for *_, e in runs]))
    rows.append(("status", [str(m.get("status")) for _, _, m, _ in runs]))
    rows.append(("wall seconds", [_rate(m.get("wall_seconds")) for _, _, m, _ in runs]))
    rows.append(("trained tokens/s", [_rate(m.get("tokens_per_second")) for _, _, m, _ in runs]))
    return [str(run.path) for run, *_ in runs], rows


def _rate(v) -> str:
    return f"{v:,.1f}" if isinstance(v, (int, float)) else "-"


def _setting(v) -> str:
    """A recipe value as the recipe writes it: 5e-05 (not 0.0001), true / false, null as '-'."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else cell(v)


def warnings(rows) -> list[str]:
    """What makes the figures of the runs not comparable as they stand."""
    by_label = dict(rows)
    out = []
    if "recipe task" in by_label:
        out.append("the runs are of different tasks: only their shared metrics compare")
    tests = [k for k in by_label if k.startswith("recipe data.test") or k in ("recipe data.max_rows", "recipe data.train")]
    if tests:
        out.append(f"the runs were tested on different data ({', '.join(k[len('recipe '):] for k in tests)}): "
                   "their test metrics are not measured on the same rows")
    return out


def best_cells(label: str, cells: list[str]) -> set[int]:
    """Which runs hold the best tuned test figure of a row (none on other rows, or when all are equal)."""
    m = re.fullmatch(r"test (\S+) \(tuned\)", label)
    values = {i: float(c) for i, c in enumerate(cells) if _number(c)}
    if not m or m.group(1) in NOT_A_SCORE or len(set(values.values())) < 2:
        return set()
    best = (min if lower_is_better(m.group(1)) else max)(values.values())
    return {i for i, v in values.items() if v == best}


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _chart(names: list[str], rows) -> str:
    """The tuned test scores on the 0-1 scale (accuracy, F1, ROUGE-L, exact match), one bar per run."""
    picked = []
    for label, cells in rows:
        m = re.fullmatch(r"test (\S+) \(tuned\)", label)
        if m and not lower_is_better(m.group(1)) and m.group(1) not in NOT_A_SCORE and all(_number(c) for c in cells) \
                and all(0 <= float(c) <= 1 for c in cells):
            picked.append((m.group(1), [float(c) for c in cells]))
    if not picked:
        return ""
    series = {Path(n).name: [vals[i] for _, vals in picked] for i, n in enumerate(names)}
    return img(plots.bars_plot([k for k, _ in picked], series, "score (0-1)", "Tuned test scores"), "tuned scores by run")


def text_table(names: list[str], rows) -> str:
    rows = [(label, [c + (" *" if i in best_cells(label, cells) else "") for i, c in enumerate(cells)])
            for label, cells in rows]  # * marks the best tuned figure
    table = [("", *names)] + [(label, *cells) for label, cells in rows]
    w = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) for r in table)


def write_html(names: list[str], rows, out: Path) -> None:
    e = html.escape
    here = Path(out).resolve().parent  # links relative to the page, wherever -o puts it
    links = [os.path.relpath(Path(n).resolve() / "report.html", here) for n in names]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tuneline comparison</title>"
             f"<style>{STYLE}</style></head><body><h1>Run comparison</h1>"
             + "".join(f"<div class='box'>Note: {e(w)}.</div>" for w in warnings(rows))
             + "<table id='comparison'><tr><th></th>"
             + "".join(f"<th><a href='{e(link)}'>{e(n)}</a></th>" for n, link in zip(names, links)) + "</tr>"]
    for label, cells in rows:
        best = best_cells(label, cells)
        parts.append(f"<tr><th>{e(label)}</th>" + "".join(
            f"<td class='good'><b>{e(c)}</b></td>" if i in best else f"<td>{e(c)}</td>" for i, c in enumerate(cells))
            + "</tr>")
    parts.append("</table><p class='muted'>Bold: the best tuned test figure of its row.</p>")
    parts.append(_chart(names, rows) + "</body></html>")
    atomic_write_text(out, "\n".join(parts))
