"""The whole evaluation of a tuned model on a test split: task metrics against the baseline(s),
the difference, calibration and confident errors (classify), slices, counterfactual flips and
forgetting. Returns (eval.json object, per-row predictions)."""

from __future__ import annotations

from pathlib import Path

from ..reporting.tables import HEADLINE
from .calibration import calibration, most_confident_errors
from .counterfactual import Swapper, load_pairs, summarise
from .forgetting import measure_forgetting
from .metrics import classification_metrics
from .slices import slice_metrics
from .text_metrics import normalise, text_metrics


def difference(tuned: dict, other: dict, task: str) -> dict:
    return {k: tuned[k] - other[k] for k in HEADLINE.get(task, ())
            if isinstance(tuned.get(k), (int, float)) and isinstance(other.get(k), (int, float))}


def _classify_extras(result, preds, data, model, tokenizer, recipe, info, device, base_dir):
    from ..tasks.classify import ClassifyTask
    from .zero_shot import zero_shot_baseline

    labels = info["labels"]
    index = {l: i for i, l in enumerate(labels)}
    y = [index[p["label"]] for p in preds]
    result["tuned"]["calibration"] = calibration([p["probs"] for p in preds], y)
    result["most_confident_errors"] = most_confident_errors(preds, labels)
    zs = zero_shot_baseline([p["text"] for p in preds], y, labels, info, recipe, device,
                            max_rows=recipe.eval.max_samples or 200)
    if zs is not None:
        result["zero_shot"] = zs
        result["difference_zero_shot"] = difference(result["tuned"], zs, "classify")

    def score(idx):
        return classification_metrics([y[i] for i in idx], [index[preds[i]["pred"]] for i in idx], labels)

    result["slices"] = [slice_metrics(c, data.records, score, "accuracy") for c in recipe.eval.slices]
    spec = recipe.eval.counterfactuals
    if spec is None or spec:  # on by default: one extra forward pass over the rows that name a group
        pairs, name = load_pairs(spec if spec is not None else True, base_dir)
        sw = Swapper(pairs)
        hits = [(i, s) for i, p in enumerate(preds) if (s := sw.swap(p["text"])) is not None]
        after = ClassifyTask().predict(model, tokenizer, [s for _, s in hits], info.get("max_length", 512),
                                       recipe.eval.batch_size or 32) if hits else []
        before = [preds[i]["pred"] for i, _ in hits]
        result["counterfactuals"] = summarise(
            [preds[i]["text"] for i, _ in hits], [s for _, s in hits], before, [a["label"] for a in after],
            [preds[i]["where"] for i, _ in hits], [b != a["label"] for b, a in zip(before, after)], name,
            extra=[{"score_change": round(a["scores"][b] - max(preds[i]["probs"]), 4)}
                   for (i, _), b, a in zip(hits, before, after)])


def _generate_extras(result, preds, data, model, tokenizer, recipe, info, device, base_dir):
    from ..tasks.generate import GenerateTask

    refs = [p["reference"] for p in preds]
    tuned = [p["tuned"] for p in preds]

    def score(idx):
        return text_metrics([tuned[i] for i in idx], [refs[i] for i in idx])

    records = data.records[:len(preds)]
    result["slices"] = [slice_metrics(c, records, score, "chrf") for c in recipe.eval.slices]
    spec = recipe.eval.counterfactuals
    if spec:  # off by default: every swapped row is generated again
        pairs, name = load_pairs(spec, base_dir)
        sw = Swapper(pairs)
        hits = []
        for i in range(len(preds)):
            conv = data.prompts[i]
            swapped = [dict(m, content=sw.swap(m["content"]) or m["content"]) if m["role"] != "assistant" else m
                       for m in conv]
            if any(a["content"] != b["content"] for a, b in zip(conv, swapped)):
                hits.append((i, swapped))
            if len(hits) >= recipe.eval.counterfactual_samples:
                break
        after = GenerateTask().generate(model, tokenizer, [c for _, c in hits], recipe.generate,
                                        batch_size=recipe.eval.batch_size or 8,
                                        max_length=recipe.train.max_length) if hits else []
        before = [tuned[i] for i, _ in hits]
        result["counterfactuals"] = summarise(
            [preds[i]["prompt"] for i, _ in hits], [c[-1]["content"] for _, c in hits], before, after,
            [preds[i]["where"] for i, _ in hits], [normalise(b) != normalise(a) for b, a in zip(before, after)], name)


def evaluate_model(task, model, tokenizer, data, recipe, info: dict, device, base_dir: Path | None = None,
                   split: str = "test") -> tuple[dict, list[dict]]:
    scores = task.evaluate_test(model, tokenizer, data, recipe, info, device)
    preds = scores.pop("predictions")
    n = scores["tuned"].get("generated", len(data))
    result = {"task": recipe.task, "labels": info.get("labels"), "n": n, "split": split, **scores}
    result["difference"] = difference(result["tuned"], result["baseline"], recipe.task)
    extras = _classify_extras if recipe.task == "classify" else _generate_extras
    extras(result, preds, data, model, tokenizer, recipe, info, device, base_dir)
    result["forgetting"] = measure_forgetting(model, tokenizer, recipe, info, device, base_dir)
    return result, preds
