"""Which way is better for a metric: the one rule that early stopping, the diagnostics, the
search and the report's colours share. A plug-in task whose metric is better when lower adds
its name here (`LOWER_IS_BETTER.add("mae")`), as tasks and methods register themselves."""

from __future__ import annotations

LOWER_IS_BETTER = {"loss", "perplexity"}


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def mode(metric: str) -> str:
    """"min" or "max": how early stopping and the search judge `metric`."""
    return "min" if lower_is_better(metric) else "max"
