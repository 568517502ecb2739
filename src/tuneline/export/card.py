"""The model card (README.md) every export carries.

A run that already has a MODEL_CARD.md keeps its own card, with a section about this export
appended; otherwise the card is written here from the run's files: what was tuned on what,
the test metrics next to the baseline, how to load this export, and how close it is to the run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..models import CATALOG, hub_id
from ..reporting.model_card import metric_table
from .source import task_options


def metrics_table(ev: dict | None) -> str:
    if not ev:
        return "_No eval.json in the run folder._"
    return f"On {ev.get('n', '?')} held-out test rows:\n\n" + metric_table(ev)


def _adapter_line(info: dict) -> str:
    """Where the adapter alone is, and the base it was trained on (qlora: the base in 4 bits)."""
    if not info.get("adapter_dir"):
        return ""
    from ..training.methods import get_method

    line = "\n\nThe PEFT adapter alone is in `adapter/` (`PeftModel.from_pretrained(base, \"adapter\")`)."
    if get_method(info.get("method", "lora")).quantize is not None:
        line += (" It was trained on the base in 4 bits (bitsandbytes NF4, blocks of 64, double quantization); "
                 "load the base that way for the adapter to reproduce this model.")
    return line


def usage(fmt: str, task, info: dict, manifest: dict) -> str:
    """How to load this export, with nothing of tuneline installed."""
    system = task_options(task, info).get("system_prompt")
    if fmt == "hf" and "chat" not in task.serves:
        return ("```python\nfrom transformers import pipeline\n\n"
                f"pipe = pipeline(\"{task.pipeline_tag}\", model=\".\")  # this folder\n"
                "print(pipe([\"Arrived quickly and works perfectly.\"]))\n```")
    if fmt == "hf":
        sys_line = f"    {{\"role\": \"system\", \"content\": {json.dumps(system)}}},\n" if system else ""
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "tok = AutoTokenizer.from_pretrained(\".\")  # this folder\n"
                "model = AutoModelForCausalLM.from_pretrained(\".\")\n"
                f"messages = [\n{sys_line}    {{\"role\": \"user\", \"content\": \"Hello!\"}},\n]\n"
                "inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
                "return_dict=True)\n"
                "out = model.generate(**inputs)  # generation_config.json holds the run's decoding options\n"
                "print(tok.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n```"
                + _adapter_line(info))
    if fmt == "gguf":
        first = next(f for f in manifest["files"] if f.endswith(".gguf"))
        return ("```bash\nollama create my-model -f Modelfile && ollama run my-model   # Ollama\n"
                f"llama-cli -m {first} -cnv --jinja                           # llama.cpp\n```\n\n"
                "`--jinja` makes llama.cpp use the GGUF's own chat template, the one the run was trained and "
                "evaluated with (default system prompt included); without it llama.cpp falls back on its "
                "built-in ChatML and answers can differ.\n\n"
                "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer  # needs the gguf package\n\n"
                f"model = AutoModelForCausalLM.from_pretrained(\".\", gguf_file=\"{first}\")\n"
                f"tok = AutoTokenizer.from_pretrained(\".\", gguf_file=\"{first}\")\n```"
                + (f"\n\nThe run's system prompt (in the Modelfile as SYSTEM): {json.dumps(system)}" if system else ""))
    return ("```python\nimport json\n\nimport numpy as np\nimport onnxruntime as ort\nfrom tokenizers import Tokenizer\n\n"
            "meta = json.load(open(\"labels.json\"))\n"
            "tok = Tokenizer.from_file(\"tokenizer.json\")\n"
            "tok.enable_truncation(meta[\"max_length\"])\n"
            "tok.enable_padding(pad_id=tok.token_to_id(json.load(open(\"tokenizer_config.json\"))[\"pad_token\"]))\n"
            "texts = [\"Arrived quickly and works perfectly.\"]\n"
            "enc = tok.encode_batch(texts)\n"
            "feed = {\"input_ids\": np.array([e.ids for e in enc], dtype=np.int64),\n"
            "        \"attention_mask\": np.array([e.attention_mask for e in enc], dtype=np.int64)}\n"
            "logits = ort.InferenceSession(\"model.onnx\").run([\"logits\"], feed)[0]\n"
            "print([meta[\"labels\"][i] for i in logits.argmax(-1)])\n```")


def parity_lines(parity: dict) -> list[str]:
    out = []
    for name, fig in parity.items():
        if not fig.get("checked", True):
            out.append(f"- `{name}`: not checked ({fig.get('why')})")
            continue
        verdict = "within" if fig.get("passed") else "OUTSIDE"
        if "label_agreement" in fig:
            what = (f"same label on {fig['same_label']}/{fig['rows']} rows, max probability difference "
                    f"{fig['max_prob_diff']:.2e}")
        else:
            what = (f"top-1 token agreement {fig['top1_agreement']:.4f} over {fig['positions']} positions, "
                    f"mean KL {fig['mean_kl']:.2e}, max |logit diff| {fig['max_abs_diff']:.3g} "
                    f"(logits up to {fig['max_abs_logit']:.3g})")
            if "tokenizer" in fig:
                t = fig["tokenizer"]
                what += f", tokenizer ids identical on {t['identical_ids']}/{t['texts']} texts"
        tol = ", ".join(f"{k} {v}" for k, v in fig.get("tolerance", {}).items())
        out.append(f"- `{name}`: {what}; {verdict} tolerance ({tol})")
    return out


def export_section(fmt: str, source, manifest: dict) -> str:
    compared = manifest.get("details", {}).get("compared_on", "")
    return "\n".join([
        f"## This export ({fmt})",
        "",
        (f"Written by `tuneline export` from the run `{source.path.name}`; `manifest.json` lists every file "
         "with its sha256, the source run's file hashes and the figures below."),
        "",
        usage(fmt, source.loaded.task, source.info, manifest),
        "",
        f"Agreement with the run's own model ({compared}):",
        "",
        *parity_lines(manifest["parity"]),
        "",
    ])


def own_card(fmt: str, source, manifest: dict) -> str:
    info, recipe, task = source.info, source.loaded.recipe, source.loaded.task
    base = info.get("base_model", "?")
    entry, hub = CATALOG.get(base), hub_id(base)
    front = ["---", f"library_name: {'gguf' if fmt == 'gguf' else ('onnx' if fmt == 'onnx' else 'transformers')}",
             *([f"pipeline_tag: {task.pipeline_tag}"] if task.pipeline_tag else []),
             f"tags: [tuneline, {info.get('method')}]"]
    if hub:
        front.append(f"base_model: {hub}")
    if entry:
        front.append(f"license: {entry.license.lower()}")
    front.append("---")
    run_json = source.loaded.run.read_manifest()
    what = task.card_summary(info)
    data_lines = [f"- {split}: `{Path(d.get('path', '?')).name}` (sha256 `{d.get('sha256', '?')[:16]}...`)"
                  for split, d in (run_json.get("data") or {}).items()]
    rows = run_json.get("rows")
    if rows:
        data_lines.append("- rows: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    t = recipe.train
    notes = []
    if entry and entry.gguf:
        notes.append(f"- The built-in `{base}` is the {entry.gguf} file (Q4_1) dequantized, a lossy copy of "
                     f"`{entry.hub_id}`; this model was tuned on that copy.")
    notes.append("- Measured only on the held-out test split above; check it on your own data before relying on it.")
    return "\n".join(front + [
        "",
        f"# {source.path.name}",
        "",
        f"`{base}` fine-tuned with tuneline for **{task.name}**" + (f" ({what})" if what else "")
        + f", method **{info.get('method')}**.",
        "",
        "## Evaluation",
        "",
        metrics_table(source.eval_result()),
        "",
        "## Training",
        "",
        *data_lines,
        (f"- {f'{t.max_steps} steps' if t.max_steps else f'{t.epochs:g} epochs'}, lr {t.lr:g}, "
         f"batch {t.batch_size}, max length {t.max_length}, seed {t.seed}; "
         f"{run_json.get('steps', '?')} optimizer steps, best at {run_json.get('best_step', '?')}"),
        "",
        "## Limitations",
        "",
        *notes,
        "",
        export_section(fmt, source, manifest),
    ])


def model_card(fmt: str, source, manifest: dict) -> tuple[str, str]:
    """(card text, where it came from)."""
    theirs = source.path / "MODEL_CARD.md"
    if theirs.is_file():
        # the run card's own "How to use" loads the run folder; the export section says how to load this
        text = re.sub(r"\n## How to use\n.*?(?=\n## |\Z)", "\n", theirs.read_text(encoding="utf-8"), flags=re.S)
        return (text.rstrip() + "\n\n" + export_section(fmt, source, manifest),
                "the run's MODEL_CARD.md, with this export's section appended")
    return own_card(fmt, source, manifest), "written by tuneline export from the run folder"
