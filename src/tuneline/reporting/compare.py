"""`tuneline compare RUN_A RUN_B ...`: recipes and metrics side by side, in the terminal and as HTML."""

from __future__ import annotations

import html
from pathlib import Path

import yaml

from .page import STYLE, read_json
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
    tasks = {m.get("task") for _, _, m, _ in runs}
    rows: list[tuple[str, list[str]]] = []
    keys = sorted({k for _, r, _, _ in runs for k in r})
    for k in keys:
        vals = [r.get(k) for _, r, _, _ in runs]
        if len({repr(v) for v in vals}) > 1:
            rows.append((f"recipe {k}", [f"{v:g}" if isinstance(v, float) else cell(v) for v in vals]))  # 5e-05, not 0.0001
    # each headline metric once, though runs of two tasks both have a loss
    for k in dict.fromkeys(k for t in sorted(t for t in tasks if t) for k in get_task(t).headline_metrics):
        rows.append((f"test {k} (tuned)", [cell(e.get("tuned", {}).get(k)) for *_, e in runs]))
        rows.append((f"test {k} (baseline)", [cell(e.get("baseline", {}).get(k)) for *_, e in runs]))
    rows.append(("forgetting (ppl change)", [
        f"{100 * e['forgetting']['relative_change']:+.1f} %" if (e.get("forgetting") or {}).get("measured") else "-"
        for *_, e in runs]))
    rows.append(("status", [str(m.get("status")) for _, _, m, _ in runs]))
    rows.append(("wall seconds", [cell(m.get("wall_seconds")) for _, _, m, _ in runs]))
    rows.append(("trained tokens/s", [cell(m.get("tokens_per_second")) for _, _, m, _ in runs]))
    return [str(run.path) for run, *_ in runs], rows


def text_table(names: list[str], rows) -> str:
    table = [("", *names)] + [(label, *cells) for label, cells in rows]
    w = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) for r in table)


def write_html(names: list[str], rows, out: Path) -> None:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tuneline comparison</title>"
             f"<style>{STYLE}</style></head><body><h1>Run comparison</h1><table id='comparison'><tr><th></th>"
             + "".join(f"<th><a href='{e(str(Path(n) / 'report.html'))}'>{e(n)}</a></th>" for n in names) + "</tr>"]
    for label, cells in rows:
        parts.append(f"<tr><th>{e(label)}</th>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    parts.append("</table></body></html>")
    atomic_write_text(out, "\n".join(parts))
