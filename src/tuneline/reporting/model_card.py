"""MODEL_CARD.md in the Hugging Face model-card layout (YAML metadata, then the usual sections),
filled from the run folder's files."""

from __future__ import annotations

import json

import yaml

from .tables import HEADLINE, _fmt
from .report import read_json
from ..runs import RunDir, atomic_write_text

PIPELINE_TAG = {"classify": "text-classification", "generate": "text-generation"}


def _metric_table(result: dict) -> str:
    keys = [k for k in HEADLINE.get(result["task"], ()) if k in result["tuned"]]
    base = result["baseline"].get("kind", "baseline").replace("_", " ")
    lines = [f"| metric | tuned | baseline ({base}) | difference |", "| --- | --- | --- | --- |"]
    for k in keys:
        d = result.get("difference", {}).get(k)
        lines.append(f"| {k} | {_fmt(result['tuned'].get(k))} | {_fmt(result['baseline'].get(k))} | "
                     f"{'-' if d is None else f'{d:+.4f}'} |")
    zs = result.get("zero_shot")
    if zs:
        lines.append("")
        lines.append(f"Zero-shot base model (asked for one label): accuracy {zs['accuracy']:.4f}, "
                     f"macro F1 {zs['macro_f1']:.4f} ({zs.get('unparseable', 0)} unparseable answers).")
    return "\n".join(lines)


def _bias_lines(result: dict) -> list[str]:
    out = []
    for s in result.get("slices") or []:
        if s.get("gap") is not None:
            out.append(f"- {s['metric']} by `{s['column']}`: best slice `{s['best']}`, worst `{s['worst']}`, "
                       f"gap {s['gap']:.4f}.")
        else:
            out.append(f"- Slices by `{s['column']}`: too few rows per value to compare.")
    c = result.get("counterfactuals")
    if c:
        if c["rows_with_terms"]:
            out.append(f"- Counterfactual swaps ({c['pairs']}): the prediction changed for {c['flips']} of "
                       f"{c['rows_with_terms']} test inputs ({100 * c['flip_rate']:.1f} %).")
        else:
            out.append(f"- Counterfactual swaps ({c['pairs']}): no test input contains a swappable term; not tested.")
    if not out:
        out.append("- No slice or counterfactual evaluation was configured (`eval.slices`, `eval.counterfactuals`).")
    return out


def model_card(run: RunDir) -> str:
    manifest = run.read_manifest()
    info = read_json(run.info_file, {})
    result = read_json(run.eval_file)
    recipe = yaml.safe_load(run.recipe.read_text()) if run.recipe.exists() else {}
    task = manifest.get("task", info.get("task"))
    meta = {"library_name": "transformers", "base_model": str(manifest.get("model")),
            "pipeline_tag": PIPELINE_TAG.get(task), "tags": ["tuneline", task, manifest.get("method")]}
    if info.get("adapter_dir"):
        meta["tags"].append("peft")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {run.path.name}", "",
             f"A `{task}` model fine-tuned from `{manifest.get('model')}` with tuneline "
             f"(method `{manifest.get('method')}`).", ""]
    lines += ["## Intended use", ""]
    if task == "classify":
        labels = ", ".join(f"`{l}`" for l in info.get("labels") or [])
        lines.append(f"Assigns one of these labels to a text: {labels}. Use it on text like the training data; "
                     "it has not been tested on other domains or languages.")
    else:
        lines.append("Answers conversations in the style of its training chats. It can state wrong facts "
                     "fluently: keep a human in the loop where answers matter.")
    lines += ["", "## Training data", ""]
    data = manifest.get("data", {})
    for split, d in data.items():
        lines.append(f"- {split}: `{d.get('path')}` (sha256 `{str(d.get('sha256', ''))[:12]}`)")
    lines.append(f"- rows used: {json.dumps(manifest.get('rows', {}))}")
    audit = read_json(run.path / "audit.json")
    if audit:
        found = [f"{f['check']} ({f['severity']}, {f['count']})" for f in audit.get("findings", [])]
        lines.append(f"- data audit: {', '.join(found) if found else 'no findings'}")
    t = recipe.get("train", {})
    lines += ["", "## Training procedure", "",
              f"- method `{manifest.get('method')}`, {manifest.get('steps')} optimizer steps "
              f"(best at {manifest.get('best_step')}), lr {t.get('lr')}, batch {t.get('batch_size')} x "
              f"{t.get('grad_accum')} accumulation, max length {t.get('max_length')}, precision {manifest.get('precision')}",
              f"- trainable parameters {manifest.get('parameters', {}).get('trainable', 0):,} of "
              f"{manifest.get('parameters', {}).get('total', 0):,}",
              f"- wall time {manifest.get('wall_seconds')} s on {json.dumps(manifest.get('hardware', {}))}",
              "", "## Evaluation", ""]
    if result:
        lines.append(f"On {result.get('n')} held-out test rows:")
        lines += ["", _metric_table(result), ""]
        f = result.get("forgetting") or {}
        if f.get("measured"):
            lines.append(f"Forgetting: perplexity on general text ({f['reference']}) went from "
                         f"{f['base_perplexity']:.3f} to {f['tuned_perplexity']:.3f} "
                         f"({100 * f['relative_change']:+.1f} %).")
        elif f:
            lines.append(f"Forgetting: not measured ({f.get('reason')}).")
    else:
        lines.append("No evaluation recorded.")
    lines += ["", "## Bias, risks and limitations", ""]
    lines += _bias_lines(result or {})
    lines.append("- The test rows come from the same source as the training rows; real traffic may differ.")
    lines += ["", "## How to use", "", "```python"]
    if task == "classify":
        lines += ["from transformers import pipeline", "", f"clf = pipeline('text-classification', model='{run.path.name}/model')",
                  "print(clf('an example text'))"]
    else:
        lines += ["import tuneline", "", f"run = tuneline.load_run('{run.path.name}')",
                  "print(run.generate([{'role': 'user', 'content': 'Hello!'}]))"]
    lines += ["```", "", "The full report with plots is `report.html` in the run folder.", ""]
    return "\n".join(lines)


def write_model_card(run: RunDir | str) -> None:
    run = run if isinstance(run, RunDir) else RunDir(run)
    atomic_write_text(run.path / "MODEL_CARD.md", model_card(run))
