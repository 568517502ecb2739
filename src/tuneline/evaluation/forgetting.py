"""Forgetting: what tuning cost outside the task, as the change in perplexity on general text.

Measured for every run on a causal language model: the untuned base model and the tuned model
read the same capped sample of a reference text. For a classifier on a causal backbone, the
tuned backbone is put back under the base model's own language-model head.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from importlib import resources
from pathlib import Path

import torch

from ..data.io import existing_file
from ..errors import UserError

DEFAULT_REFERENCE = "general_english.txt"


def reference_text(path: str | None, base_dir: Path | None = None) -> tuple[str, str]:
    """(text, name) of the reference: the recipe's file, or the small text shipped with tuneline."""
    if path is None:
        text = resources.files("tuneline.resources").joinpath(DEFAULT_REFERENCE).read_text(encoding="utf-8")
        return text, f"tuneline:{DEFAULT_REFERENCE}"
    p = existing_file(path, base_dir, "eval.forgetting.reference", "give a plain-text file of general English, "
                      "or leave the key out to use tuneline's own sample")
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except UnicodeDecodeError as e:
        raise UserError(f"eval.forgetting.reference: {p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def windows(tokenizer, text: str, max_tokens: int, window: int) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) > 1]


@torch.no_grad()
def perplexity(model, chunks: list[list[int]], pad_id: int, device, batch_size: int = 4) -> float:
    """exp(mean next-token cross-entropy) over every predicted token of every window."""
    from ..data.batching import pad_batch

    was = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(chunks), batch_size):
        ids, mask = pad_batch(chunks[s:s + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits[:, -ids.shape[1]:]  # prompt tuning prepends virtual tokens
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    model.train(was)
    return math.exp(total / max(count, 1))


def is_causal_lm(path: str, trust_remote_code: bool = False) -> bool:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return False
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    # BERT-like encoders are registered for causal LM too (as decoders); they were not trained as one.
    return not getattr(cfg, "is_encoder_decoder", False) and cfg.model_type not in {"bert", "roberta", "xlm-roberta",
                                                                                    "electra", "camembert"}


def _load_base_lm(path: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)


def tuned_language_model(task, model, base_path: str, trust_remote_code: bool):
    """The tuned model as a language model, and a note on how it was built: a causal-LM task's
    model is one; any other model is a backbone, put back under the base model's LM head."""
    if task.causal_lm:
        return model, "the tuned model"
    if hasattr(model, "peft_config"):
        # prompt tuning (never merged) leaves every backbone weight as it was
        return None, "backbone unchanged (prompt tuning); the base perplexity stands"
    lm = _load_base_lm(base_path, trust_remote_code)
    missing, unexpected = lm.base_model.load_state_dict(model.base_model.state_dict(), strict=False)
    if unexpected or len(missing) > 0:
        raise RuntimeError(f"backbone weights do not fit the language model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return lm, "tuned backbone under the base model's language-model head"


def _cache_file(base_path: str, text: str, max_tokens: int, window: int) -> Path:
    from ..models import tuneline_home

    stamp = []
    for f in sorted(Path(base_path).glob("*.safetensors")) + sorted(Path(base_path).glob("*.bin")):
        st = f.stat()
        stamp.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    key = json.dumps([str(Path(base_path).resolve()), stamp, hashlib.sha256(text.encode()).hexdigest(),
                      max_tokens, window])
    return tuneline_home() / "cache" / "forgetting" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def base_perplexity(base_path: str, tokenizer, chunks, text, opts, device, trust_remote_code) -> float:
    """The base model's figure is the same for every run on that model and reference: cached."""
    cache = _cache_file(base_path, text, opts.max_tokens, opts.window)
    if cache.exists():
        try:
            return float(json.loads(cache.read_text())["perplexity"])
        except (ValueError, KeyError):
            pass
    lm = _load_base_lm(base_path, trust_remote_code).to(device)
    ppl = perplexity(lm, chunks, tokenizer.pad_token_id, device)
    del lm
    from ..runs import atomic_write_json

    atomic_write_json(cache, {"perplexity": ppl, "base_path": base_path})
    return ppl


def measure_forgetting(task, model, tokenizer, recipe, info: dict, device, base_dir: Path | None = None) -> dict:
    """{"measured": bool, ...}: base and tuned perplexity on the reference and the relative change."""
    opts = recipe.eval.forgetting
    base_path = info["base_model_path"]
    trust = info.get("trust_remote_code", False)
    if not opts.enabled:
        return {"measured": False, "reason": "turned off (eval.forgetting.enabled: false)"}
    if not is_causal_lm(base_path, trust):
        return {"measured": False, "reason": "the base model is not a causal language model (no next-token head)"}
    text, name = reference_text(opts.reference, base_dir)
    chunks = windows(tokenizer, text, opts.max_tokens, opts.window)
    if not chunks:
        raise UserError(f"eval.forgetting.reference: {name} has no text to score")
    t0 = time.time()
    base = base_perplexity(base_path, tokenizer, chunks, text, opts, device, trust)
    lm, how = tuned_language_model(task, model, base_path, trust)
    tuned = base if lm is None else perplexity(lm.to(device), chunks, tokenizer.pad_token_id, device)
    return {"measured": True, "reference": name, "tokens": sum(len(c) for c in chunks), "window": opts.window,
            "base_perplexity": base, "tuned_perplexity": tuned, "relative_change": (tuned - base) / base,
            "how": how, "seconds": round(time.time() - t0, 2)}
