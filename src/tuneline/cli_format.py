"""Plain-text tables for the terminal."""

from __future__ import annotations

HEADLINE = {
    "classify": ("accuracy", "macro_f1", "loss"),
    "generate": ("loss", "perplexity", "exact_match", "bleu", "chrf", "rougeL"),
}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def metrics_table(result: dict) -> str:
    keys = HEADLINE.get(result.get("task"), ())
    tuned, base = result.get("tuned", {}), result.get("baseline", {})
    base_name = base.get("kind", "baseline").replace("_", " ")
    rows = [("metric", "tuned", f"baseline ({base_name})")]
    for k in keys:
        if k in tuned or k in base:
            rows.append((k, _fmt(tuned.get(k)), _fmt(base.get(k))))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"Test metrics on {result.get('n', '?')} rows ({result.get('split', 'test')}):"]
    for i, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w[j]) for j, c in enumerate(r)))
        if i == 0:
            lines.append("  " + "  ".join("-" * w[j] for j in range(3)))
    per_class = tuned.get("per_class")
    if per_class:
        lines.append("\nPer class (tuned): " + ", ".join(
            f"{lab} F1 {v['f1']:.3f} (n={v['support']})" for lab, v in per_class.items()))
    return "\n".join(lines)
