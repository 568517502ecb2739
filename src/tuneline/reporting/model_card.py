"""MODEL_CARD.md in the Hugging Face model-card layout (YAML metadata, then the usual sections),
filled from the run folder's files; what differs by task is asked of the task."""

from __future__ import annotations

import json

import yaml

from .page import read_json
from .tables import cell, headline_keys
from ..models import hub_id
from ..runs import RunDir, atomic_write_text
from ..tasks import Task, task_of


def metric_table(result: dict) -> str:
    """Markdown: the task's headline test metrics, tuned against the baseline (and zero-shot)."""
    base = result["baseline"].get("kind", "baseline").replace("_", " ")
    lines = [f"| metric | tuned | baseline ({base}) | difference |", "| --- | --- | --- | --- |"]
    for k in headline_keys(result):
        d = result.get("difference", {}).get(k)
        lines.append(f"| {k} | {cell(result['tuned'].get(k))} | {cell(result['baseline'].get(k))} | "
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


def _front_matter(run: RunDir, task: Task, manifest: dict, info: dict) -> list[str]:
    meta = {"library_name": "transformers", "base_model": hub_id(str(manifest.get("model"))),
            "pipeline_tag": task.pipeline_tag or None, "tags": ["tuneline", task.name or None, manifest.get("method")]}
    if info.get("adapter_dir"):
        meta["tags"].append("peft")
    meta = {k: v for k, v in meta.items() if v is not None}  # a local base model has no public id to name
    return ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
            f"# {run.path.name}", "",
            f"A `{task.name or None}` model fine-tuned from `{manifest.get('model')}` with tuneline "
            f"(method `{manifest.get('method')}`).", "",
            "## Intended use", "", task.intended_use(info)]


def _training_lines(run: RunDir, manifest: dict) -> list[str]:
    lines = ["", "## Training data", ""]
    for split, d in manifest.get("data", {}).items():
        lines.append(f"- {split}: `{d.get('path')}` (sha256 `{str(d.get('sha256', ''))[:12]}`)")
    lines.append(f"- rows used: {json.dumps(manifest.get('rows', {}))}")
    audit = read_json(run.path / "audit.json")
    if audit:
        found = [f"{f['check']} ({f['severity']}, {f['count']})" for f in audit.get("findings", [])]
        lines.append(f"- data audit: {', '.join(found) if found else 'no findings'}")
    recipe = yaml.safe_load(run.recipe.read_text()) if run.recipe.exists() else {}
    t, params = recipe.get("train", {}), manifest.get("parameters", {})
    return lines + [
        "", "## Training procedure", "",
        f"- method `{manifest.get('method')}`, {manifest.get('steps')} optimizer steps "
        f"(best at {manifest.get('best_step')}), lr {t.get('lr')}, batch "
        f"{str(t['batch_tokens']) + ' tokens' if t.get('batch_tokens') else t.get('batch_size')} x "
        f"{t.get('grad_accum')} accumulation, max length {t.get('max_length')}, precision {manifest.get('precision')}",
        f"- trainable parameters {params.get('trainable', 0):,} of {params.get('total', 0):,}",
        f"- wall time {manifest.get('wall_seconds')} s on {json.dumps(manifest.get('hardware', {}))}"]


def _evaluation_lines(result: dict | None) -> list[str]:
    lines = ["", "## Evaluation", ""]
    if not result:
        return lines + ["No evaluation recorded."]
    lines += [f"On {result.get('n')} held-out test rows:", "", metric_table(result), ""]
    f = result.get("forgetting") or {}
    if f.get("measured"):
        lines.append(f"Forgetting: perplexity on general text ({f['reference']}) went from "
                     f"{f['base_perplexity']:.3f} to {f['tuned_perplexity']:.3f} "
                     f"({100 * f['relative_change']:+.1f} %).")
    elif f:
        lines.append(f"Forgetting: not measured ({f.get('reason')}).")
    return lines


def _usage_lines(run: RunDir, task: Task) -> list[str]:
    """A chat model answers through tuneline (its template, its decoding options); a model with a
    Hugging Face pipeline loads with plain Transformers; anything else through tuneline."""
    load = ["import tuneline", "", f"run = tuneline.load_run('{run.path.name}')"]
    if "chat" in task.serves:
        code = load + ["print(run.generate([{'role': 'user', 'content': 'Hello!'}]))"]
    elif task.pipeline_tag:
        code = ["from transformers import pipeline", "",
                f"pipe = pipeline('{task.pipeline_tag}', model='{run.path.name}/model')",
                "print(pipe('an example text'))"]
    else:
        code = load + ["print(run.predict(['an example text']))"]
    return ["", "## How to use", "", "```python", *code, "```", "",
            "The full report with plots is `report.html` in the run folder.", ""]


def model_card(run: RunDir) -> str:
    manifest = run.read_manifest()
    info = read_json(run.info_file, {})
    result = read_json(run.eval_file)
    record = manifest if manifest.get("task") else info
    task = task_of(record) if record.get("task") else Task()
    lines = _front_matter(run, task, manifest, info)
    lines += _training_lines(run, manifest)
    lines += _evaluation_lines(result)
    lines += ["", "## Bias, risks and limitations", "", *_bias_lines(result or {}),
              "- The test rows come from the same source as the training rows; real traffic may differ."]
    lines += _usage_lines(run, task)
    return "\n".join(lines)


def write_model_card(run: RunDir | str) -> None:
    run = run if isinstance(run, RunDir) else RunDir(run)
    atomic_write_text(run.path / "MODEL_CARD.md", model_card(run))
