"""The end of a session: the trial table, parameter importances, the best trial's recipe as a
plain recipe file, summary.json, and the terminal summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from ..data.io import resolve_data_path
from ..errors import UserError
from ..models import CATALOG
from ..runs import atomic_write_json, atomic_write_text
from .budget import fmt_seconds
from .study import Settings, StudyDir


def trial_rows(study, sd: StudyDir) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        inter = t.intermediate_values
        status = t.user_attrs.get("status") or t.state.name.lower()
        if t.state.name == "FAIL" and t.user_attrs.get("interrupted"):
            status = "interrupted"
        rows.append({
            "number": t.number, "status": status, "value": t.value,
            "last_check": max(inter) if inter else None,
            "last_check_value": inter[max(inter)] if inter else None,
            "intermediate": {str(k): v for k, v in sorted(inter.items())},
            "params": t.params, "seconds": t.user_attrs.get("seconds"),
            "folder": t.user_attrs.get("folder"), "message": t.user_attrs.get("message"),
            "resume_of": t.user_attrs.get("resume_of"),
        })
    return rows


def importances(study) -> tuple[dict | None, str]:
    """fANOVA importances (Optuna's default evaluator) over the complete trials."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return None, "needs at least 2 complete trials"
    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (RuntimeError, ValueError) as e:  # e.g. every complete trial has the same values
        return None, str(e)


def best_recipe_text(sd: StudyDir, s: Settings, best: dict) -> str:
    """The best trial's recipe as a plain recipe: no search section, paths valid from the study folder."""
    folder = sd.path / best["folder"]
    data = yaml.safe_load((folder / "recipe.yaml").read_text())
    data.pop("search", None)
    if s.threads and s.base["train"].get("num_threads") is None:
        data["train"]["num_threads"] = None  # set by --nproc for parallel trials, not a finding
    base_dir, here = Path(s.base_dir), sd.path.resolve()
    for key in ("train", "validation", "test"):
        if data["data"].get(key):
            data["data"][key] = os.path.relpath(resolve_data_path(data["data"][key], base_dir, f"data.{key}"), here)
    model = data["model"]
    if model not in CATALOG and not Path(model).is_absolute() and (base_dir / model).exists():
        data["model"] = os.path.relpath(base_dir / model, here)
    data["output"] = str(sd.path / "best")
    header = (f"# The best trial ({best['number']}) of the search in {sd.path}: validation {s.metric} "
              f"{best['value']:.4f}.\n# Its run folder: {folder}\n# Train it again: tuneline train {sd.best_recipe}\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def summarize(study, sd: StudyDir, s: Settings, stop_reason: str = "", session_seconds: float = 0.0) -> dict:
    rows = trial_rows(study, sd)
    imp, imp_note = importances(study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = {"metric": s.metric, "direction": s.direction, "split": "validation", "recipe": s.recipe_file,
               "target_trials": s.trials, "counts": counts, "stop_reason": stop_reason,
               "session_seconds": round(session_seconds, 1),
               "trial_seconds": round(sum(r["seconds"] or 0 for r in rows), 1),
               "space": s.search["space"], "importances": imp, "importances_note": imp_note,
               "best": None, "trials": rows}
    complete = [r for r in rows if r["status"] == "complete" and r["value"] is not None]
    if complete:
        pick = max if s.direction == "maximize" else min
        best = pick(complete, key=lambda r: r["value"])
        eval_file = sd.path / best["folder"] / "eval.json"
        test = json.loads(eval_file.read_text()).get("tuned", {}) if eval_file.exists() else {}
        summary["best"] = {**best, "test": {k: v for k, v in test.items() if isinstance(v, (int, float))},
                           "recipe_file": sd.best_recipe.name}
        atomic_write_text(sd.best_recipe, best_recipe_text(sd, s, best))
    atomic_write_json(sd.summary_file, summary)
    return summary


def format_summary(summary: dict, sd: StudyDir, top: int = 10) -> str:
    c = summary["counts"]
    lines = [f"\nSearch: {sum(c.values())} trials (" + ", ".join(f"{n} {k}" for k, n in sorted(c.items())) +
             f"); validation {summary['metric']}, {summary['direction']}; {fmt_seconds(summary['trial_seconds'])} "
             "of trial time in all"]
    rows = [r for r in summary["trials"] if r["status"] == "complete"]
    rows.sort(key=lambda r: r["value"], reverse=summary["direction"] == "maximize")
    if rows:
        keys = list(summary["space"])
        head = ["trial", summary["metric"], *keys, "time"]
        table = [head] + [[str(r["number"]), f"{r['value']:.4f}", *(_fmt(r["params"].get(k)) for k in keys),
                           fmt_seconds(r["seconds"] or 0)] for r in rows[:top]]
        w = [max(len(row[i]) for row in table) for i in range(len(head))]
        lines.append(f"Complete trials, best first{' (top ' + str(top) + ')' if len(rows) > top else ''}:")
        for i, row in enumerate(table):
            lines.append("  " + "  ".join(cell.ljust(w[j]) for j, cell in enumerate(row)))
            if i == 0:
                lines.append("  " + "  ".join("-" * w[j] for j in range(len(head))))
    if summary["importances"]:
        lines.append("Parameter importance (fANOVA): " + ", ".join(
            f"{k} {v:.2f}" for k, v in summary["importances"].items()))
    best = summary["best"]
    if best:
        lines.append(f"Best: trial {best['number']}, validation {summary['metric']} {best['value']:.4f}"
                     + (f" (test {summary['metric']} {best['test'][summary['metric']]:.4f})"
                        if summary["metric"] in best["test"] else ""))
        lines.append(f"Best recipe: {sd.best_recipe}")
        lines.append(f"Best run:    {sd.path / best['folder']}")
    else:
        lines.append("No trial completed yet.")
    lines.append(f"Report:      {sd.report}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def require_metric(metric: str, recipe) -> None:
    from ..tasks import task_of

    names = task_of(recipe).metric_names
    task_name = recipe.task
    if metric not in names:
        raise UserError(f"search.metric: {metric!r} is not a validation metric of task {task_name}; "
                        f"allowed: {', '.join(names)}")
