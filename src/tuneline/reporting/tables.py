"""Plain-text tables for the terminal, and what every table of test metrics shares: which
metrics it shows (the task's headline metrics) and how a value is written."""

from __future__ import annotations

from ..evaluation import verdict
from ..tasks import task_of


def cell(v) -> str:
    """A metric or setting as a table cell: floats to 4 places, a missing value as '-'."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def headline_keys(result: dict) -> list[str]:
    """The task's headline metrics that the eval.json object `result` holds, tuned or baseline."""
    tuned, base = result.get("tuned", {}), result.get("baseline", {})
    return [k for k in task_of(result).headline_metrics if k in tuned or k in base]


def metrics_table(result: dict) -> str:
    tuned, base = result.get("tuned", {}), result.get("baseline", {})
    base_name = base.get("kind", "baseline").replace("_", " ")
    rows = [("metric", "tuned", f"baseline ({base_name})")]
    rows += [(k, cell(tuned.get(k)), cell(base.get(k))) for k in headline_keys(result)]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"Test metrics on {result.get('n', '?')} rows ({result.get('split', 'test')}):"]
    for i, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w[j]) for j, c in enumerate(r)))
        if i == 0:
            lines.append("  " + "  ".join("-" * w[j] for j in range(3)))
    v = verdict.compare(result, task_of(result).key_metric) if result.get("task") else None
    if v:
        lines.append(f"\nVerdict: the tuned model is {verdict.sentence(v, base_name)}.")
    per_class = tuned.get("per_class")
    if per_class:
        lines.append("\nPer class (tuned): " + ", ".join(
            f"{lab} F1 {v['f1']:.3f} (n={v['support']})" for lab, v in per_class.items()))
    lines += extra_lines(result)
    return "\n".join(lines)


def extra_lines(result: dict) -> list[str]:
    """One line each for the zero-shot baseline, calibration, forgetting, slices and counterfactuals."""
    out = []
    zs = result.get("zero_shot")
    if zs:
        out.append(f"Zero-shot base model: accuracy {zs['accuracy']:.4f}, macro_f1 {zs['macro_f1']:.4f} "
                   f"({zs.get('unparseable', 0)} unparseable answers)")
    cal = result.get("tuned", {}).get("calibration")
    if cal:
        out.append(f"Calibration: ECE {cal['ece']:.4f}")
    f = result.get("forgetting") or {}
    if f.get("measured"):
        out.append(f"Forgetting: general-text perplexity {f['base_perplexity']:.2f} -> {f['tuned_perplexity']:.2f} "
                   f"({100 * f['relative_change']:+.1f} %)")
    for s in result.get("slices") or []:
        if s.get("gap") is not None:
            out.append(f"Slices by {s['column']}: {s['metric']} gap {s['gap']:.4f} "
                       f"(best {s['best']}, worst {s['worst']})")
    c = result.get("counterfactuals")
    if c and c.get("rows_with_terms"):
        out.append(f"Counterfactuals: {c['flips']} of {c['rows_with_terms']} predictions changed "
                   f"when group terms were swapped ({100 * c['flip_rate']:.1f} %)")
    return ["", *out] if out else []
