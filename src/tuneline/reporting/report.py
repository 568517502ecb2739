"""The run's report.html: one self-contained page (plots embedded) that a reader understands
without the terminal. Built only from the files in the run folder, so `tuneline report RUN`
rebuilds it at any time."""

from __future__ import annotations

import re

import yaml

from . import plots
from .page import LOWER_IS_BETTER, NOT_A_SCORE, STYLE, esc, img, read_json, signed
from .sections import SECTIONS
from .tables import cell, headline_keys
from ..evaluation import verdict
from ..runs import RunDir, atomic_write_text
from ..tasks import Task, task_of


def headline(result: dict) -> str:
    """The verdict box: the verdict metrics (evaluation/verdict.py), tuned against the baseline."""
    v = verdict.compare(result, task_of(result).key_metric)
    if v is None:
        return ""
    base = result["baseline"].get("kind", "baseline").replace("_", " ")
    if len(v["rows"]) == 1:
        key, t, b, _ = v["rows"][0]
        return (f"<div class='box'>Tuned model: <b>{key} {t:.4f}</b> on {result.get('n')} test rows, "
                f"{v['word']} the baseline ({base}) at {b:.4f} ({signed(t - b, key)}).</div>")
    figures = "; ".join(f"<b>{k}</b> {t:.4f} vs {b:.4f} ({signed(t - b, k)})" for k, t, b, _ in v["rows"])
    return (f"<div class='box'>Tuned model on {result.get('n')} test rows: <b>{v['word']} the baseline ({base})</b>, "
            f"better on {v['better']} of {len(v['rows'])} verdict metrics: {figures}.</div>")


def metrics_section(result: dict) -> list[str]:
    tuned, base, zs = result["tuned"], result["baseline"], result.get("zero_shot")
    keys = headline_keys(result)
    cols = [("tuned", tuned), (f"baseline: {base.get('kind', 'base model').replace('_', ' ')}", base)]
    if zs:
        cols.append(("baseline: zero-shot base model", zs))
    out = ["<h2 id='results'>Baseline vs tuned (test)</h2>", headline(result),
           "<table id='metrics'><tr><th>metric</th>" + "".join(f"<th>{esc(c)}</th>" for c, _ in cols)
           + "<th>tuned - baseline</th>" + ("<th>tuned - zero-shot</th>" if zs else "") + "</tr>"]
    diff, dzs = result.get("difference", {}), result.get("difference_zero_shot", {})
    for k in keys:
        row = f"<tr><td>{k}</td>" + "".join(f"<td>{cell(d.get(k))}</td>" for _, d in cols)
        row += f"<td>{signed(diff.get(k), k)}</td>" + (f"<td>{signed(dzs.get(k), k)}</td>" if zs else "")
        out.append(row + "</tr>")
    out.append("</table>")
    if zs:
        out.append(f"<p class='muted'>Zero-shot: the untuned chat model was asked to answer with one label; "
                   f"{zs.get('unparseable', 0)} of {zs.get('n')} answers named no label and count as wrong.</p>")
    bar_keys = [k for k in keys if k not in LOWER_IS_BETTER | NOT_A_SCORE and isinstance(tuned.get(k), (int, float))]
    # one chart per scale: chrF and BLEU run 0-100, accuracy or ROUGE-L 0-1, which would vanish beside them
    hundred = [k for k in bar_keys if max(abs(float(d.get(k) or 0)) for _, d in cols) > 1.5]
    for group, label in (([k for k in bar_keys if k not in hundred], "score (0-1)"), (hundred, "score (0-100)")):
        if group:
            series = {name: [float(d.get(k) or 0) for k in group] for name, d in cols}
            out.append(img(plots.bars_plot(group, series, label, "Test metrics: tuned vs baseline"),
                           "baseline vs tuned"))
    return out


def forgetting_section(result: dict) -> list[str]:
    f = result.get("forgetting")
    out = ["<h2 id='forgetting'>Forgetting</h2>"]
    if not f:
        return out + ["<p class='muted'>Not recorded for this run.</p>"]
    if not f.get("measured"):
        return out + [f"<p>Not measured: {esc(f.get('reason'))}.</p>"]
    rel = f["relative_change"]
    word = "higher (the model forgot some general language)" if rel > 0 else "lower or equal (no forgetting seen)"
    out.append(f"<p>Perplexity on general text ({esc(f['reference'])}, {f['tokens']:,} tokens): "
               f"{word}.</p><table id='forgetting-table'><tr><th>base model</th><th>tuned model</th>"
               f"<th>relative change</th></tr><tr><td>{f['base_perplexity']:.3f}</td><td>{f['tuned_perplexity']:.3f}</td>"
               f"<td>{signed(rel, 'perplexity')} ({100 * rel:+.1f} %)</td></tr></table>"
               f"<p class='muted'>{esc(f.get('how', ''))}; lower perplexity is better.</p>")
    return out


def curves_section(run: RunDir, task: Task, best_step: int | None) -> list[str]:
    metrics = run.read_metrics()
    out = ["<h2 id='curves'>Training curves</h2>"]
    loss = plots.loss_plot(metrics, best_step)
    if not loss:
        return out + ["<p class='muted'>No metrics logged.</p>"]
    out.append(img(loss, "loss curves"))
    out.append(img(plots.eval_curves_plot(metrics, task.metric_names, best_step), "validation curves"))
    out.append(img(plots.train_figures_plot(metrics, task.train_figures, task.train_lengths, best_step),
                   "training figures"))
    out.append(img(plots.lr_plot(metrics), "learning-rate schedule"))
    return out


def diagnostics_section(run: RunDir) -> list[str]:
    diags = read_json(run.path / "diagnostics.json")
    if not diags:
        return []
    out = ["<h2 id='diagnostics'>Diagnostics</h2><table><tr><th>severity</th><th>check</th><th>what</th>"
           "<th>step</th><th>advice</th></tr>"]
    for d in diags:
        out.append(f"<tr><td>{esc(d.get('severity', ''))}</td><td>{esc(d.get('check', ''))}</td>"
                   f"<td>{esc(d.get('message', ''))}</td><td>{esc(d.get('step', ''))}</td>"
                   f"<td>{esc(d.get('advice', ''))}</td></tr>")
    return out + ["</table>"]


def slices_section(result: dict) -> list[str]:
    slices = result.get("slices") or []
    if not slices:
        return []
    out = ["<h2 id='slices'>Slices</h2>"]
    for s in slices:
        m = s["metric"]
        gap = (f"gap between best ({esc(s['best'])}) and worst ({esc(s['worst'])}) slice: <b>{s['gap']:.4f}</b>"
               if s.get("gap") is not None else "too few slices with enough rows to compare")
        out.append(f"<h3>by {esc(s['column'])}</h3><p>{m}: {gap} (slices under {s['min_rows']} rows are not "
                   f"compared).</p><table><tr><th>{esc(s['column'])}</th><th>rows</th><th>{m}</th></tr>")
        for r in s["slices"]:
            v = r.get(m)
            out.append(f"<tr><td>{esc(r['value'])}</td><td>{r['n']}</td><td>{cell(v)}</td></tr>")
        out.append("</table>")
        if s.get("omitted_values"):
            out.append(f"<p class='muted'>{s['omitted_values']} rarer values not shown.</p>")
        vals = [r for r in s["slices"] if isinstance(r.get(m), (int, float))]
        if len(vals) >= 2:
            out.append(img(plots.bars_plot([r["value"] for r in vals], {m: [r[m] for r in vals]}, m,
                                           f"{m} by {s['column']}"), f"slices {s['column']}"))
    return out


def counterfactual_section(result: dict) -> list[str]:
    c = result.get("counterfactuals")
    if not c:
        return []
    out = ["<h2 id='counterfactuals'>Counterfactual flips</h2>"]
    if not c["rows_with_terms"]:
        return out + [f"<p>No test input contains a term of the pairs ({esc(c['pairs'])}).</p>"]
    out.append(f"<p>Swapping terms ({esc(c['pairs'])}) in the {c['rows_with_terms']} test inputs that contain one "
               f"changed the prediction in <b>{c['flips']}</b> ({100 * c['flip_rate']:.1f} %). "
               + ("A fair model changes none." if c["flips"] else "None changed.") + "</p>")
    if c["examples"]:
        out.append("<table><tr><th>original</th><th>swapped</th><th>before</th><th>after</th></tr>")
        for e in c["examples"]:
            out.append(f"<tr><td>{esc(e['original'])}</td><td>{esc(e['swapped'])}</td><td>{esc(e['before'])}</td>"
                       f"<td>{esc(e['after'])}</td></tr>")
        out.append("</table>")
    return out


def audit_section(run: RunDir) -> list[str]:
    audit = read_json(run.path / "audit.json")
    if audit is None:
        return []
    findings = audit.get("findings", [])
    out = ["<h2 id='audit'>Data audit</h2>"]
    dist = next((e["distribution"] for f in findings if f["check"] == "imbalance" for e in f["examples"]
                 if e.get("distribution")), None)
    if dist:  # labelled data: the classes the model learned from
        out.append(img(plots.bars_plot(list(dist), {"training rows": list(dist.values())}, "rows",
                                       "Label distribution (train)"), "label distribution"))
    if not findings:
        return out + ["<p>No findings.</p>"]
    out.append("<table><tr><th>severity</th><th>check</th><th>count</th><th>what</th><th>first lines</th></tr>")
    for f in findings:
        lines = ", ".join(f"{e.get('file', '').rsplit('/', 1)[-1]}:{e['line']}" for e in f["examples"][:3] if e.get("line"))
        out.append(f"<tr><td>{esc(f['severity'])}</td><td>{esc(f['check'])}</td><td>{f['count']}</td>"
                   f"<td>{esc(f['message'])}</td><td>{esc(lines)}</td></tr>")
    return out + ["</table>"]


def _pairs(d: dict) -> str:
    """{"train": 378, "test": 120} as 'train 378, test 120' (not JSON)."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:,}" if isinstance(v, int) else str(v)

    return ", ".join(f"{k.replace('_', ' ')} {value(v)}" for k, v in d.items() if v is not None)


def run_section(run: RunDir, manifest: dict) -> list[str]:
    p = manifest.get("parameters", {})
    rows = [
        ("rows", _pairs(manifest.get("rows", {}))),
        ("trainable parameters", f"{p.get('trainable', 0):,} of {p.get('total', 0):,}"),
        ("steps", f"{manifest.get('steps')} (best validation at step {manifest.get('best_step')}"
                  + (", stopped early" if manifest.get("stopped_early") else "") + ")"),
        ("wall time", f"{manifest.get('wall_seconds')} s (training {manifest.get('train_seconds')} s, "
                      f"test evaluation {manifest.get('test_eval_seconds')} s)"),
        ("trained tokens", f"{manifest.get('trained_tokens')} ({manifest.get('tokens_per_second')} per second)"),
        ("precision", manifest.get("precision")),
        ("hardware", _pairs(manifest.get("hardware", {}))),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())),
    ]
    out = ["<h2 id='run'>Timings and versions</h2><table>"]
    out += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows]
    out.append("</table>")
    if run.recipe.exists():
        out += recipe_section(run)
    return out


def recipe_section(run: RunDir) -> list[str]:
    """What this run set (the keys that differ from the defaults), then the whole resolved recipe folded."""
    from ..recipe import recipe_diff, recipe_from_dict

    text = run.recipe.read_text()
    out = ["<h2 id='recipe'>Recipe</h2>"]
    try:
        saved = yaml.safe_load(text)
        base = recipe_from_dict({k: saved[k] for k in ("task", "model", "method") if k in saved}
                                | {"data": {"train": saved["data"]["train"]}}).model_dump(mode="json")
        flat = _flat(saved)
        changed = [f for k in recipe_diff(base, saved) for f in flat if f == k or f.startswith(k + ".")]
    except Exception:  # noqa: BLE001 - an old or hand-edited recipe: show it whole
        changed, flat = [], {}
    if changed:
        out.append("<p>Set by this run (every other key has its default):</p><table>"
                   + "".join(f"<tr><th>{esc(k)}</th><td>{esc(flat[k])}</td></tr>" for k in changed) + "</table>")
    lines = text.count("\n")
    return out + [f"<details><summary>The whole resolved recipe ({lines} lines, defaults included)</summary>"
                  f"<pre>{esc(text)}</pre></details>"]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nav(parts: list[str]) -> str:
    """Links to the sections this report has, in their order (and nothing it lacks)."""
    found = re.findall(r"<h2 id='([^']+)'>(.*?)</h2>", "\n".join(parts))
    return "<nav>" + "".join(f"<a href='#{i}'>{re.sub('<[^>]+>', '', title).lower()}</a>" for i, title in found) + "</nav>"


def write_report(run: RunDir | str, extra_sections: tuple[str, ...] = ()) -> None:
    """extra_sections: HTML blocks added before the audit (e.g. the search study this run won)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    manifest = run.read_manifest()
    result = read_json(run.eval_file)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>tuneline report: {esc(run.path.name)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Run report: {esc(run.path.name)}</h1>",
             f"<p>Task <b>{esc(manifest.get('task', ''))}</b>, model <b>{esc(manifest.get('model'))}</b>, "
             f"method <b>{esc(manifest.get('method'))}</b>, status <b>{esc(manifest.get('status'))}</b>.</p>"]
    if manifest.get("error"):
        parts.append(f"<div class='box bad'>Error: {esc(manifest['error'])}</div>")
    if result:
        parts += metrics_section(result)
        parts += forgetting_section(result)
    # a run that failed before it wrote its task gets the sections every task has
    task = task_of(manifest) if manifest.get("task") else Task()
    parts += curves_section(run, task, manifest.get("best_step"))
    parts += diagnostics_section(run)
    if result:
        for name in task.report_sections:
            parts += SECTIONS[name](result, run)
        parts += slices_section(result)
        parts += counterfactual_section(result)
    parts.extend(extra_sections)
    parts += audit_section(run)
    parts += run_section(run, manifest)
    parts.insert(4 + bool(manifest.get("error")), _nav(parts))
    parts.append("</body></html>")
    atomic_write_text(run.report, "\n".join(p for p in parts if p))
