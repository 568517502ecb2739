"""Read a run's training and validation curves (metrics.jsonl) like a practitioner would: where
the best model was, whether validation got worse while training kept improving (overfitting),
whether training learned at all. Findings are plain dicts, written to diagnostics.json as
[{"check", "severity", "message", "step", "advice"}] for the report, and printed at the end.

A pure function of the log and the recipe, so `tuneline diagnose RUN` gives the same answer
for any run folder, finished, failed or still running.
"""

from __future__ import annotations

import json
import math

from ..evaluation import direction, verdict
from ..runs import RunDir, atomic_write_json
from .methods import get_method

# How much worse validation must get after its best to count: noise on a small validation set
# moves the loss by a few percent between evaluations.
LOSS_WORSE_REL, LOSS_WORSE_ABS = 0.05, 0.01
METRIC_WORSE_ABS = 0.01
# Training "kept improving" when its loss fell by this share after the best validation step.
TRAIN_BETTER_REL = 0.05
LOSS_METRICS = ("loss", "perplexity")


def _train_loss_near(train: list[dict], step: int, n: int = 3) -> float | None:
    """Mean of the last n logged training losses up to `step` (each is already a window mean)."""
    before = [r["loss"] for r in train if r["step"] <= step]
    return sum(before[-n:]) / len(before[-n:]) if before else None


def _curve(evals: list[dict], metric: str) -> list[tuple[int, float, float]]:
    return [(r["step"], r.get("epoch", 0.0), float(r[metric])) for r in evals
            if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]


def _best(curve, mode: str):
    pick = min if mode == "min" else max
    return pick(curve, key=lambda p: p[2])  # first of equals: the earliest step


def _worse(best: float, final: float, mode: str) -> bool:
    if mode == "min":
        return final > best * (1 + LOSS_WORSE_REL) and final - best > LOSS_WORSE_ABS
    return best - final > METRIC_WORSE_ABS


def _advice(recipe, best_epoch: float, train_rows: int | None) -> str:
    tc = recipe.train
    tips = [f"train fewer epochs (the best was at epoch {best_epoch:.2f} of {tc.epochs:g}: "
            f"train.epochs: {max(1, math.ceil(best_epoch))})"]
    if tc.early_stopping is None:
        tips.append("or stop early (train.early_stopping: {metric: loss, patience: 2})")
    if tc.dropout is None or tc.dropout < 0.3:
        tips.append(f"more dropout (train.dropout: {0.2 if tc.dropout is None else round(tc.dropout + 0.1, 2)})")
    if tc.weight_decay < 0.1:
        tips.append("more weight decay (train.weight_decay: 0.1)")
    method = get_method(recipe.method)
    tip = method.overfit_tip(recipe) if method.overfit_tip else None
    if tip:
        tips.append(tip)
    tips.append(f"more training data ({train_rows} rows now)" if train_rows else "more training data")
    return "; ".join(tips) + "."


def diagnose(metrics: list[dict], recipe, *, watch: str, mode: str, best_step: int | None = None,
             train_rows: int | None = None, val_rows: int | None = None) -> list[dict]:
    """Findings from the metrics log. `watch`/`mode`: the metric that picked the best checkpoint."""
    train = [r for r in metrics if r.get("type") == "train" and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in metrics if r.get("type") == "eval" and r.get("split", "validation") == "validation"]
    findings: list[dict] = []
    loss_curve = _curve(evals, "loss")
    if loss_curve and train:
        findings += _overfitting(train, loss_curve, evals, recipe, watch, mode, best_step, train_rows, val_rows)
    if len(train) >= 2:
        findings += _not_learning(train, loss_curve, recipe)
    return findings


def _within_noise(best: float, final: float, val_rows: int | None) -> str:
    """A note when the validation loss rose by less than its own noise: two standard errors of a mean
    over `val_rows` rows, taken as 2 / sqrt(n) of the loss (per-row losses spread about as wide as
    their mean). A small rise after a best checkpoint that was kept costs nothing: not a warning."""
    if not val_rows or best <= 0:
        return ""
    rise, noise = final / best - 1, 2 / math.sqrt(val_rows)
    return (f" On {val_rows} validation rows a rise of {100 * rise:.0f} % is within noise (about "
            f"{100 * noise:.0f} %): a note, not a warning.") if rise < noise else ""


def _overfitting(train, loss_curve, evals, recipe, watch, mode, best_step, train_rows, val_rows=None) -> list[dict]:
    findings = []
    watched = _curve(evals, watch) if watch not in LOSS_METRICS else loss_curve
    kept = best_step if best_step is not None else (_best(watched, mode)[0] if watched else None)
    b_step, b_epoch, b_loss = _best(loss_curve, "min")
    f_step, f_epoch, f_loss = loss_curve[-1]
    t_best, t_end = _train_loss_near(train, b_step), _train_loss_near(train, train[-1]["step"])
    gap_best = b_loss - t_best if t_best is not None else None
    gap_end = f_loss - t_end if t_end is not None else None
    drop = _metric_drop(evals, watch, mode)
    metric_note = drop[1] if drop else ""

    loss_worse = b_step < f_step and _worse(b_loss, f_loss, "min")
    train_better = t_best is not None and t_end is not None and t_end < t_best * (1 - TRAIN_BETTER_REL)
    if (loss_worse or drop) and train_better:
        where, where_epoch = (b_step, b_epoch) if loss_worse else drop[0][:2]
        what = (f"validation loss rose from {b_loss:.4g} at step {b_step} (epoch {b_epoch:.2f}, its best) to "
                f"{f_loss:.4g} at step {f_step}{metric_note}" if loss_worse else metric_note[2:])
        kept_note = (f" The saved model is the best checkpoint (step {kept}, by validation {watch}), so the "
                     f"steps after it were wasted, not the result." if kept is not None else "")
        noise = _within_noise(b_loss, f_loss, val_rows) if loss_worse and not drop and kept is not None else ""
        findings.append({
            "check": "overfitting", "severity": "info" if noise else "warning", "step": where,
            "message": (f"{what} while the training loss "
                        f"kept falling ({t_best:.4g} -> {t_end:.4g}); the train/validation loss gap grew "
                        f"from {gap_best:.3f} to {gap_end:.3f}.{kept_note}{noise}"),
            "advice": _advice(recipe, where_epoch, train_rows),
        })
    if kept is not None:
        findings.append(_best_model(watched, watch, kept, b_epoch, f_step, gap_best, gap_end))
    return findings


def _metric_drop(evals, watch: str, mode: str) -> tuple[tuple, str] | None:
    """The watched task metric (accuracy, F1...) ended worse than its best: (best point, note), else None."""
    curve = _curve(evals, watch) if watch not in LOSS_METRICS else []
    if not curve:
        return None
    best, final = _best(curve, mode), curve[-1]
    if not (best[0] < final[0] and _worse(best[2], final[2], mode)):
        return None
    return best, f"; validation {watch} fell from {best[2]:.4g} (step {best[0]}) to {final[2]:.4g}"


def _best_model(watched, watch: str, kept: int, epoch_if_unknown: float, last_step: int, gap_best, gap_end) -> dict:
    kept_epoch = next((e for s, e, _ in watched if s == kept), epoch_if_unknown)
    value = next((v for s, _, v in watched if s == kept), None)
    shown = f" {value:.4g}" if value is not None else ""
    gap = f"; train/validation loss gap {gap_best:.3f} there, {gap_end:.3f} at the end" if gap_best is not None else ""
    return {
        "check": "best_model", "severity": "info", "step": kept,
        "message": (f"best validation {watch}{shown} at step {kept} (epoch {kept_epoch:.2f}) of "
                    f"{last_step}; the final model is that checkpoint{gap}"),
        "advice": "",
    }


def _not_learning(train, loss_curve, recipe) -> list[dict]:
    first, last = train[0]["loss"], _train_loss_near(train, train[-1]["step"])
    val_moved = len(loss_curve) >= 2 and min(v for *_, v in loss_curve) < loss_curve[0][2] * 0.98
    if last < first * 0.95 or val_moved:
        return []
    return [{
        "check": "not_learning", "severity": "warning", "step": train[-1]["step"],
        "message": f"the training loss barely moved ({first:.4g} -> {last:.4g}): the model learned little",
        "advice": (f"raise train.lr (now {recipe.train.lr:g}), train longer (train.epochs), check that the "
                   f"labels follow from the text (tuneline data check), or pick a larger model."),
    }]


def diagnose_run(run: RunDir, recipe, task, state: dict | None = None) -> list[dict]:
    """Diagnose a run folder; `state` (the loop's) tells which step's weights were kept."""
    es = recipe.train.early_stopping
    watch = es.metric if es else task.default_metric
    mode = es.resolved_mode() if es else direction.mode(watch)
    manifest = run.read_manifest()
    best_step = (state or {}).get("best_step", manifest.get("best_step"))
    rows = manifest.get("rows") or {}
    findings = diagnose(run.read_metrics(), recipe, watch=watch, mode=mode, best_step=best_step,
                        train_rows=rows.get("train"), val_rows=rows.get("validation"))
    worse = _worse_than_baseline(_read_eval(run), task)
    return worse + findings


def _read_eval(run: RunDir) -> dict | None:
    try:
        return json.loads(run.eval_file.read_text())
    except (OSError, ValueError):  # no test evaluation yet (a failed or running run)
        return None


def _worse_than_baseline(result: dict | None, task) -> list[dict]:
    """The tuned model below its baseline on most of its verdict metrics (evaluation/verdict.py): the
    first thing a user must hear, whatever the curves say."""
    v = verdict.compare(result, task.key_metric) if result else None
    if v is None or v["worse"] <= v["better"]:
        return []
    base = (result.get("baseline") or {}).get("kind", "baseline").replace("_", " ")
    figures = ", ".join(f"{k} {t:.4g} vs {b:.4g}" for k, t, b, side in v["rows"] if side < 0)
    return [{
        "check": "worse_than_baseline", "severity": "warning", "step": None,
        "message": f"on the test rows the tuned model is {verdict.sentence(v, base)}: {figures}",
        "advice": ("look at the report's other figures and samples first (a chat model tuned to short answers can "
                   "lose corpus chrF while winning on loss); then try a smaller train.lr, more data or epochs, "
                   "or check the data with tuneline data check"),
    }]


def write_diagnostics(run: RunDir, findings: list[dict]) -> None:
    atomic_write_json(run.path / "diagnostics.json", findings)
    run.update_manifest(diagnostics=[f["check"] for f in findings])


def format_findings(findings: list[dict]) -> str:
    if not findings:
        return "Diagnostics: nothing to report."
    lines = ["Diagnostics:"]
    for f in findings:
        at = f" (step {f['step']})" if f.get("step") is not None else ""
        lines.append(f"  {f['severity']:<7} {f['check']}{at}: {f['message']}")
        if f.get("advice"):
            lines.append(f"          what to change: {f['advice']}")
    return "\n".join(lines)


def read_diagnostics(run: RunDir) -> list[dict]:
    path = run.path / "diagnostics.json"
    return json.loads(path.read_text()) if path.exists() else []
