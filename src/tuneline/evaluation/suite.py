"""The whole evaluation of a tuned model on a test split: task metrics against the baseline(s),
the difference, the task's own extras (calibration, slices, counterfactual flips...: its
`evaluation_extras`) and forgetting. Returns (eval.json object, per-row predictions)."""

from __future__ import annotations

from pathlib import Path

from .forgetting import measure_forgetting
from .metrics import difference


def evaluate_model(task, model, tokenizer, data, recipe, info: dict, device, base_dir: Path | None = None,
                   split: str = "test") -> tuple[dict, list[dict]]:
    scores = task.evaluate_test(model, tokenizer, data, recipe, info, device)
    preds = scores.pop("predictions")
    n = scores["tuned"].get("generated", len(data))
    result = {"task": task.name, "objective": task.objective, "labels": info.get("labels"), "n": n, "split": split, **scores}
    result["difference"] = difference(result["tuned"], result["baseline"], task.headline_metrics)
    result["verdict_metrics"] = task.verdict_metrics(recipe, data)
    task.evaluation_extras(result, preds, data, model, tokenizer, recipe, info, device, base_dir)
    result["forgetting"] = measure_forgetting(task, model, tokenizer, recipe, info, device, base_dir)
    return result, preds
