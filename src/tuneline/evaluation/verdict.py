"""The verdict of a test evaluation: is the tuned model better than its baseline, on the metrics the
task (or the recipe's `eval.headline`) names in eval.json's `verdict_metrics`. The report's box, the
terminal summary and the `worse_than_baseline` diagnostic all read it from here."""

from __future__ import annotations

from .direction import lower_is_better

TIE = 0.02  # within 2 % of the baseline: neither better nor worse


def compare(result: dict, fallback: str) -> dict | None:
    """{"rows": [(metric, tuned, baseline, +1 better | 0 tie | -1 worse)], "better", "worse", "word"};
    None when no verdict metric has both figures. `fallback`: the task's key metric, for an eval.json
    written before verdict metrics existed."""
    rows = []
    for key in result.get("verdict_metrics") or [fallback]:
        t, b = result.get("tuned", {}).get(key), (result.get("baseline") or {}).get(key)
        if isinstance(t, (int, float)) and isinstance(b, (int, float)):
            rows.append((key, t, b, _side(key, t, b)))
    if not rows:
        return None
    better, worse = sum(r[3] > 0 for r in rows), sum(r[3] < 0 for r in rows)
    word = "better than" if better > worse else ("worse than" if worse > better else "level with")
    return {"rows": rows, "better": better, "worse": worse, "word": word}


def _side(key: str, tuned: float, base: float) -> int:
    if abs(tuned - base) <= TIE * max(abs(base), 1e-9):
        return 0
    return 1 if (tuned < base) == lower_is_better(key) else -1


def sentence(v: dict, baseline: str) -> str:
    """One line for a terminal: 'better than the baseline (majority class) on 2 of 3: loss, rougeL ...'."""
    names = ", ".join(k for k, *_ in v["rows"])
    if len(v["rows"]) == 1:
        return f"{v['word']} the baseline ({baseline}) on {names}"
    return f"{v['word']} the baseline ({baseline}): better on {v['better']} of {len(v['rows'])} ({names}), worse on {v['worse']}"
