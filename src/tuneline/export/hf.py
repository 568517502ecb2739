"""`--format hf`: the merged model as a plain Transformers folder, plus the PEFT adapter alone.

The folder is what `from_pretrained` reads with nothing of tuneline installed: safetensors
weights, config (with the label map for classifiers), tokenizer and chat template, and for chat
models a generation_config.json holding the run's decoding options. The proof is loading it
back with plain Transformers and comparing with the run's model on the test split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from ..models import CATALOG, resolve_model
from ..runs import atomic_write_json
from .compare import LogitsAgreement, causal_logits, prediction_agreement, within

MODELS = "Transformers models"  # what the format is for, in the error for a task without it
QUANTIZATIONS = ("f32", "f16")

# By whether the task's model is a causal LM (its next-token logits are compared on a few test
# conversations) or not (its labels and probabilities on every test row).
TOLERANCE = {
    False: {
        # a byte-for-byte copy must predict exactly as the run does
        "f32": {"min_label_agreement": 1.0, "max_prob_diff": 1e-5},
        "f16": {"min_label_agreement": 0.99, "max_prob_diff": 1e-2},
        "adapter": {"min_label_agreement": 1.0, "max_prob_diff": 1e-5},
    },
    True: {
        "f32": {"max_abs_diff": 1e-4, "min_top1_agreement": 1.0},
        "f16": {"mean_kl": 1e-3, "min_top1_agreement": 0.99},  # as for GGUF f16
        "adapter": {"mean_kl": 1e-4, "min_top1_agreement": 0.99},
    },
}


def _auto_class(source):
    import transformers

    return getattr(transformers, source.loaded.task.model_class)


def _write_model(source, model_dir: Path, out: Path, quantization: str) -> None:
    if quantization == "f32":
        for f in model_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        return
    model = _auto_class(source).from_pretrained(str(model_dir), dtype=torch.float16)
    model.save_pretrained(str(out), safe_serialization=True)
    source.loaded.tokenizer.save_pretrained(str(out))
    for f in model_dir.iterdir():  # anything the save did not write (generation config, templates)
        if f.is_file() and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)


def _decoding_defaults(source, out: Path) -> None:
    """generation_config.json = how the run decodes: its answer length, greedy or sampling, stop tokens."""
    g = source.decoding
    tok = source.loaded.tokenizer
    f = out / "generation_config.json"
    cfg = json.loads(f.read_text()) if f.exists() else {}
    eos = cfg.get("eos_token_id")
    eos = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    eos.discard(None)
    cfg.update(max_new_tokens=g.get("max_new_tokens", 128), do_sample=bool(g.get("temperature")),
               eos_token_id=min(eos) if len(eos) == 1 else sorted(eos), pad_token_id=tok.pad_token_id)
    if g.get("temperature"):
        cfg.update(temperature=g["temperature"], top_p=g.get("top_p", 1.0))
    else:
        for k in ("temperature", "top_p", "top_k"):
            cfg.pop(k, None)
    for key, off in (("repetition_penalty", 1.0), ("no_repeat_ngram_size", 0)):
        if g.get(key, off) != off:
            cfg[key] = g[key]
        else:
            cfg.pop(key, None)
    atomic_write_json(f, cfg)


def _portable_base(source) -> str:
    """What a PEFT user elsewhere can load: the hub id of a built-in, else what the recipe named."""
    base = source.info.get("base_model", "")
    if base in CATALOG:
        return CATALOG[base].hub_id
    return base


def _copy_adapter(source, out: Path) -> dict:
    dest = out / "adapter"
    shutil.copytree(source.adapter_dir, dest)
    cfg_file = dest / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    trained_on = cfg.get("base_model_name_or_path")
    cfg["base_model_name_or_path"] = _portable_base(source)
    atomic_write_json(cfg_file, cfg)
    return {"base_model_name_or_path": cfg["base_model_name_or_path"], "trained_on": trained_on}


def _base_path(source) -> str | None:
    path = source.info.get("base_model_path")
    if path and Path(path).exists():
        return path
    if source.info.get("base_model") in CATALOG:
        return resolve_model(source.info["base_model"]).path
    return None


@torch.no_grad()
def _classify_logits(source, model, rows_ids: list[list[int]]) -> torch.Tensor:
    task, tok = source.loaded.task, source.loaded.tokenizer
    return task.logits(model.eval(), rows_ids, tok.pad_token_id, 32, next(model.parameters()).device)


def _compare(source, exported, inputs: list[list[int]]) -> dict:
    if not source.loaded.task.causal_lm:
        return prediction_agreement(_classify_logits(source, source.loaded.model, inputs),
                                    _classify_logits(source, exported, inputs))
    agreement = LogitsAgreement()
    for ids in inputs:
        agreement.add(causal_logits(source.loaded.model, ids), causal_logits(exported.eval(), ids))
    return agreement.result()


def _inputs(source, samples: int) -> tuple[list[list[int]], str]:
    if not source.loaded.task.causal_lm:  # every test row: a classifier is cheap to run
        ids = source.sample_token_ids(10**9, max_tokens=source.loaded.max_length)
        return ids, f"all {len(ids)} test rows"
    ids = source.sample_token_ids(samples, max_tokens=256)
    return ids, f"{len(ids)} test conversations, {sum(map(len, ids))} positions"


def _adapter_parity(source, out: Path, inputs) -> dict:
    """Base model + the exported adapter through PEFT against the merged model."""
    from peft import PeftModel

    base_path = _base_path(source)
    if base_path is None:
        return {"checked": False, "why": f"base model {source.info.get('base_model')!r} is not available here"}
    from ..training.methods import base_as_trained

    loaded = source.loaded
    base = loaded.task.load_model(base_path, loaded.recipe, loaded.tokenizer, loaded.labels)
    try:  # the base as the adapter trained on it (qlora: in 4 bits, the values model/ was merged into)
        base = base_as_trained(base, loaded.recipe)
    except UserError as e:  # e.g. qlora's bitsandbytes is not installed here
        return {"checked": False, "why": str(e)}
    model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    elsewhere = {p.device for p in model.parameters()} - {torch.device("cpu")}
    if elsewhere:  # quantized on the GPU where the run would train: the rest of the model joins it
        model.to(elsewhere.pop())
    figures = _compare(source, model, inputs)
    tolerance = TOLERANCE[loaded.task.causal_lm]["adapter"]
    figures.update(checked=True, tolerance=tolerance, passed=within(figures, tolerance))
    return figures


def export(source, out: Path, quantize: list[str], samples: int) -> dict:
    if len(quantize) != 1:
        raise UserError("--format hf: give one --quantize (f32 or f16)")
    quantization = quantize[0]
    model_dir = source.require_merged("--format hf")
    print(f"Writing the merged model ({quantization}) ...", flush=True)
    _write_model(source, model_dir, out, quantization)
    if source.loaded.task.causal_lm:
        _decoding_defaults(source, out)
    details = {"dtype": quantization}
    inputs, compared_on = _inputs(source, samples)
    print(f"Checking: plain Transformers from_pretrained vs the run's model on {compared_on} ...", flush=True)
    exported = _auto_class(source).from_pretrained(str(out), dtype=torch.float32)
    parity = {"model": _compare(source, exported, inputs)}
    if source.loaded.labels:  # the label map travels in config.json
        labels = [exported.config.id2label[i] for i in range(exported.config.num_labels)]
        parity["model"]["label_map_matches"] = labels == source.loaded.labels
    del exported
    tolerance = TOLERANCE[source.loaded.task.causal_lm][quantization]
    parity["model"].update(tolerance=tolerance, passed=within(parity["model"], tolerance)
                           and parity["model"].get("label_map_matches", True))
    files = sorted(f.name for f in out.iterdir() if f.is_file())
    if source.adapter_dir is not None and source.adapter_dir.is_dir():
        details["adapter"] = _copy_adapter(source, out)
        print("Checking: base model + adapter (PEFT) vs the merged model ...", flush=True)
        parity["adapter"] = _adapter_parity(source, out, inputs)
        files += [f"adapter/{f.name}" for f in sorted((out / "adapter").iterdir()) if f.is_file()]
    details["compared_on"] = compared_on
    return {"files": files, "parity": parity, "details": details}
