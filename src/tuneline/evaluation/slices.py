"""Metrics per value of a test column (`eval.slices`), and the gap between best and worst slice."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from ..errors import UserError

MAX_SLICES = 30  # a column with hundreds of values (an id) is not a slice; keep the largest


def slice_value(v) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):
        return "(missing)"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def slice_metrics(column: str, records: list[dict], score: Callable[[list[int]], dict], metric: str,
                  min_rows: int = 5) -> dict:
    """score(row indices) -> metrics dict of that subset. Slices with fewer than min_rows rows are
    listed but left out of the gap: their metric is mostly noise."""
    if records and all(column not in r for r in records):
        raise UserError(f"eval.slices: column {column!r} is not in the test rows "
                        f"(columns: {', '.join(sorted(records[0]))})")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[slice_value(r.get(column))].append(i)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    omitted = max(0, len(ordered) - MAX_SLICES)
    rows = []
    for value, idx in ordered[:MAX_SLICES]:
        m = score(idx)
        rows.append({"value": value, "n": len(idx), **{k: v for k, v in m.items() if isinstance(v, (int, float))}})
    counted = [r for r in rows if r["n"] >= min_rows and r.get(metric) is not None]
    out = {"column": column, "metric": metric, "slices": rows, "omitted_values": omitted, "min_rows": min_rows,
           "gap": None, "best": None, "worst": None}
    if len(counted) >= 2:
        best = max(counted, key=lambda r: r[metric])
        worst = min(counted, key=lambda r: r[metric])
        out.update(gap=best[metric] - worst[metric], best=best["value"], worst=worst["value"])
    return out
