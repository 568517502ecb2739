"""The study in HTML: a section (objective over trials, checks per trial, importances, the trial
table) for the study's report.html and for the best trial's own report."""

from __future__ import annotations

import html
import json
import os

from ..reporting.plots import _png
from ..runs import RunDir, atomic_write_text
from .budget import fmt_seconds
from .study import StudyDir


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def objective_plot(summary: dict) -> str | None:
    """Each trial's objective by trial number (pruned ones at their last check), with the best so far."""
    rows = summary["trials"]
    done = [(r["number"], r["value"]) for r in rows if r["status"] == "complete"]
    cut = [(r["number"], r["last_check_value"]) for r in rows
           if r["status"] in ("pruned", "stopped") and r["last_check_value"] is not None]
    if not done and not cut:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if done:
        ax.plot(*zip(*done), "o", color="tab:blue", label="complete")
        pick = max if summary["direction"] == "maximize" else min
        best, xs, ys = None, [], []
        for n, v in sorted(done):
            best = v if best is None else pick(best, v)
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    if cut:
        ax.plot(*zip(*cut), "x", color="tab:red", label="pruned (value at its last check)")
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"validation {summary['metric']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = _png(fig)
    plt.close(fig)
    return out


def checks_plot(summary: dict) -> str | None:
    """Validation value at each check of each trial: where the pruner cut."""
    rows = [r for r in summary["trials"] if r["intermediate"]]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r in rows:
        xs = [int(k) for k in r["intermediate"]]
        style = {"complete": ("tab:blue", 0.8), "pruned": ("tab:red", 0.5)}.get(r["status"], ("tab:gray", 0.5))
        ax.plot(xs, list(r["intermediate"].values()), "o-", color=style[0], alpha=style[1], lw=1, ms=3)
    best = summary.get("best")
    if best and best["intermediate"]:
        ax.plot([int(k) for k in best["intermediate"]], list(best["intermediate"].values()), "o-",
                color="tab:green", lw=2, label=f"best (trial {best['number']})")
        ax.legend(fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("check (share of the trial's training, in evals_per_trial parts)")
    ax.set_ylabel(f"validation {summary['metric']}")
    ax.grid(alpha=0.3)
    out = _png(fig)
    plt.close(fig)
    return out


def _v(x) -> str:
    if x is None:
        return ""
    return f"{x:.4g}" if isinstance(x, float) else html.escape(str(x))


def study_section(summary: dict, prefix: str) -> str:
    """prefix: the study folder relative to the page the section is in ('' or '../../')."""
    c = summary["counts"]
    keys = list(summary["space"])
    m = summary["metric"]
    parts = ["<h2>Hyperparameter search</h2>",
             f"<p>Objective: validation <b>{html.escape(m)}</b> ({summary['direction']}), the value at each "
             f"trial's best checkpoint. {sum(c.values())} trials: "
             + ", ".join(f"{n} {html.escape(k)}" for k, n in sorted(c.items()))
             + f"; {fmt_seconds(summary['trial_seconds'])} of trial time. "
             f"<a href='{prefix}summary.json'>summary.json</a></p>"]
    best = summary.get("best")
    if best:
        test = best["test"].get(m)
        parts.append(f"<p>Best: <a href='{prefix}{html.escape(best['folder'])}/report.html'>trial {best['number']}</a>, "
                     f"validation {html.escape(m)} <b>{best['value']:.4f}</b>"
                     + (f" (test {test:.4f})" if isinstance(test, float) else "")
                     + f"; its recipe: <a href='{prefix}{best['recipe_file']}'>{best['recipe_file']}</a></p>")
        parts.append("<table><tr><th>key</th><th>best value</th><th>searched</th></tr>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{_v(best['params'].get(k))}</td>"
            f"<td>{html.escape(json.dumps({a: b for a, b in summary['space'][k].items() if b is not None}))}</td></tr>" for k in keys) + "</table>")
    for title, img in (("Objective over trials", objective_plot(summary)),
                       ("Validation checks per trial", checks_plot(summary))):
        if img:
            parts.append(f"<h3>{title}</h3><img alt='{title.lower()}' src='data:image/png;base64,{img}'>")
    parts.append("<h3>Parameter importance</h3>")
    if summary["importances"]:
        parts.append("<table><tr><th>key</th><th>importance (fANOVA)</th><th></th></tr>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td><td><div style='background:#4c72b0;height:10px;"
            f"width:{max(1, int(200 * v))}px'></div></td></tr>" for k, v in summary["importances"].items())
            + "</table>")
    else:
        parts.append(f"<p class='muted'>Not computed: {html.escape(summary['importances_note'])}.</p>")
    parts.append(f"<h3>Trials</h3><table><tr><th>trial</th><th>status</th><th>{html.escape(m)}</th>"
                 "<th>last check</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "<th>time</th></tr>")
    for r in summary["trials"]:
        link = (f"<a href='{prefix}{html.escape(r['folder'])}/report.html'>{r['number']}</a>"
                if r["status"] == "complete" and r["folder"] else str(r["number"]))
        last = f"{r['last_check']}: {_v(r['last_check_value'])}" if r["last_check"] is not None else ""
        parts.append(f"<tr><td>{link}</td><td>{html.escape(r['status'])}</td><td>{_v(r['value'])}</td>"
                     f"<td>{last}</td>" + "".join(f"<td>{_v(r['params'].get(k))}</td>" for k in keys)
                     + f"<td>{fmt_seconds(r['seconds'] or 0)}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


def write_study_reports(sd: StudyDir, summary: dict) -> None:
    """report.html in the study folder; the best trial's report.html gets the same section."""
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>tuneline search report</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
            "th{background:#f3f3f3}img{max-width:100%}.muted{color:#777}</style></head><body>",
            f"<h1>Search report: {html.escape(sd.path.name)}</h1>",
            f"<p class='muted'>Recipe {html.escape(summary['recipe'])}</p>",
            study_section(summary, ""), "</body></html>"]
    atomic_write_text(sd.report, "\n".join(page))
    best = summary.get("best")
    if best:
        run = RunDir(sd.path / best["folder"])
        eval_file = run.eval_file
        if eval_file.exists():
            from ..reporting.report import write_report

            prefix = os.path.relpath(sd.path, run.path) + "/"
            write_report(run, extra_sections=(study_section(summary, prefix),))
