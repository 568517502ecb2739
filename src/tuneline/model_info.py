"""`tuneline models info NAME`: what a model is and what training it would cost, before any
training time is spent. The model is built on PyTorch's meta device (shapes, no weights), so
parameter counts are exact for every method (the real adapters are applied) and cost nothing.

Memory estimate (one process, AdamW, the loop of this project), in bytes:

  weights      = 4 * P                         fp32 master weights, frozen or not
  gradients    = 4 * T                         T = trainable parameters of the method
  optimizer    = 8 * T                         AdamW's two moments, fp32
  activations  = B * S * (L * a_layer + 2h) * e  + logits
    a_layer    = 8h + 2 d_kv + m * i           per token and block: norms, q/k/v, attention output,
                                               residuals (8h + 2 d_kv) and the MLP (m = 4 gated, 2 plain)
               + 2 * heads * S                 attention probabilities, only when attention dropout > 0
                                               (otherwise SDPA never materialises them)
               + sum(in + out + r) / L         LoRA/DoRA with dropout: PEFT keeps a dropped-out copy of
                                               every adapted layer's input and the rank-r output; the
                                               `out` term is a measured correction (see below)
    e          = 4 (fp32) or 2 (bf16/fp16 autocast)
    logits     = B * S * V * 12                causal LM tasks: fp32 logits, log-softmax, gradient; an upper
                                               bound (the loop computes them at labelled positions only)
  runtime      = 1 GiB                          Python, PyTorch, tokenizer, data

B = batch, S = length, L = blocks, h = hidden size, i = MLP size, d_kv = key/value width, V = vocab.

Checked against the peak RSS of real runs (SmolLM2-135M, batch 4 x length 256, 4 steps, Dolly rows
longer than 256 tokens, `/usr/bin/time -v tuneline train`): full 4.46 GiB measured vs 4.85 estimated,
LoRA r=8 5.18 vs 4.55, freeze 1.79 vs 2.23. Treat it as +-25 %.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .tasks import TASKS, get_task, task_class

GIB = 1024 ** 3
RUNTIME_BYTES = 1 * GIB


def _cfg(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _is_decoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any("CausalLM" in a or "LMHead" in a for a in archs) or bool(getattr(config, "is_decoder", False))


def _task(name: str | None, config):
    """The task named by --task, else the first registered one made for this kind of model."""
    if name is None:
        decoder = _is_decoder(config)
        name = next((t for t in TASKS if task_class(t).causal_lm == decoder), None)
        if name is None:
            raise UserError(f"--task: no registered task suits {config.model_type}; give one of: {', '.join(TASKS)}")
    if name not in TASKS:
        raise UserError(f"--task: {name!r}; allowed: {', '.join(TASKS)}")
    return get_task(name)


def _meta_model(config, task):
    import torch
    import transformers

    with torch.device("meta"):
        return getattr(transformers, task.model_class).from_config(config)


def _license(source, entry) -> str:
    if entry is not None:
        return entry.license
    readme = Path(source.path) / "README.md"
    if readme.is_file():
        import yaml

        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            try:  # a model card's YAML front matter: ---\nlicense: apache-2.0\n---
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            if isinstance(front, dict) and front.get("license"):
                return str(front["license"])
    return "unknown (see the model card)"


def _dimensions(spec: str, config, meta, length: int) -> dict:
    """The transformer's sizes, and a_layer: activations kept per token and block (module docstring)."""
    h = _cfg(config, "hidden_size", "d_model", "n_embd")
    heads = _cfg(config, "num_attention_heads", "n_head")
    kv = _cfg(config, "num_key_value_heads", default=heads)
    head_dim = _cfg(config, "head_dim", default=h // heads if h and heads else None)
    inter = _cfg(config, "intermediate_size", "ffn_dim", "n_inner", default=4 * h if h else None)
    layers = _cfg(config, "num_hidden_layers", "n_layer", "num_layers")
    if not all((h, heads, layers, inter)):
        raise UserError(f"{spec}: cannot read the transformer's sizes from its config ({config.model_type})")
    gated = any(n.endswith(("gate_proj", "gate_up_proj", "w1")) for n, _ in meta.named_modules())
    attn_dropout = _cfg(config, "attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", default=0.0)
    a_layer = 8 * h + 2 * kv * head_dim + (4 if gated else 2) * inter
    if attn_dropout and attn_dropout > 0:
        a_layer += 2 * heads * length
    return {"hidden": h, "heads": heads, "kv_heads": kv, "intermediate": inter, "layers": layers,
            "vocab": config.vocab_size, "a_layer": a_layer}


def _lora_dropout_copies(model) -> int:
    """Activations per token of the LoRA/DoRA layers with dropout: PEFT keeps a dropped-out copy of
    the input (in) and the rank-r output (r). The `out` term is measured, not derived: without it the
    estimate was 1.2 GiB / 23 % under the peak RSS of SmolLM2 LoRA at 4 x 256."""
    if not hasattr(model, "peft_config"):
        return 0
    import torch.nn as nn
    from peft.tuners.lora import LoraLayer

    return sum(m.in_features + m.out_features + m.r[name] for m in model.modules()
               if isinstance(m, LoraLayer) and hasattr(m, "in_features")
               for name, dropout in m.lora_dropout.items() if isinstance(dropout, nn.Dropout))


def _method_costs(config, task, method, lora_r: int, batch: int, length: int, act_bytes: int, dims: dict) -> dict:
    from .recipe import recipe_from_dict
    from .training.methods import apply_method, count_parameters

    recipe = recipe_from_dict({"task": task.name, "model": "x", "method": method.name, "data": {"train": "x"},
                               "lora": {"r": lora_r}})
    model = apply_method(_meta_model(config, task), recipe, task, quantize=False)  # sizes only
    trainable, total = count_parameters(model)
    weight_bytes = 4 * total
    if method.quantize is not None:  # the blocks' frozen linear layers in 4 bits (qlora)
        from .training.quantized_base import BYTES_PER_WEIGHT, block_linears

        weight_bytes -= (4 - BYTES_PER_WEIGHT) * sum(lin.weight.numel() for _, _, lin in block_linears(model)
                                                          if not lin.weight.requires_grad)
    # Autograd keeps activations only where gradients flow: every block for full and adapters,
    # the trained top blocks for freeze (the frozen ones below need none).
    blocks = method.activation_blocks(recipe, dims["layers"]) if method.activation_blocks else dims["layers"]
    per_token = blocks * dims["a_layer"] + 2 * dims["hidden"] + _lora_dropout_copies(model)
    tokens = batch * length
    logits = tokens * dims["vocab"] * 12 if task.causal_lm else 0
    parts = {"weights": int(weight_bytes), "gradients": 4 * trainable, "optimizer": 8 * trainable,
             "activations": tokens * per_token * act_bytes + logits, "runtime": RUNTIME_BYTES}
    parts["total"] = sum(parts.values())
    # --lora-r sets the rank of the methods whose options are the lora: section
    label = f"{method.name} r={lora_r}" if method.options_section == "lora" else method.name
    return {"method": label, "trainable": trainable, "total": total,
            "bytes": parts, "gib": {k: round(v / GIB, 3) for k, v in parts.items()}}


def model_info(spec: str, *, batch: int = 8, length: int = 512, precision: str = "fp32", lora_r: int = 8,
               task: str | None = None) -> dict:
    from .models import CATALOG, load_config, load_tokenizer, resolve_model
    from .training.methods import METHODS

    source = resolve_model(spec)
    config = load_config(source.path)
    task = _task(task, config)
    entry = CATALOG.get(spec)
    template = getattr(load_tokenizer(source.path), "chat_template", None)
    dims = _dimensions(spec, config, _meta_model(config, task), length)
    act_bytes = 4 if precision == "fp32" else 2
    costs = [_method_costs(config, task, m, lora_r, batch, length, act_bytes, dims)
             for m in METHODS.values() if m.memory_row]
    return {
        "name": spec, "source": source.kind, "path": source.path,
        "package": entry.package if entry else None, "hub_id": entry.hub_id if entry else None,
        "architecture": (config.architectures or [config.model_type])[0], "model_type": config.model_type,
        "task": task.name, "layers": dims["layers"], "hidden_size": dims["hidden"], "heads": dims["heads"],
        "kv_heads": dims["kv_heads"], "intermediate_size": dims["intermediate"], "vocab_size": config.vocab_size,
        "parameters": costs[0]["total"],
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)) and task.causal_lm,
        "context_length": _cfg(config, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"),
        "chat_template": "its own" if template else (
            "none (tuneline's plain template is used)" if task.data_shape == "chat" else "none"),
        "license": _license(source, entry),
        "memory": {"batch": batch, "length": length, "precision": precision, "methods": costs},
    }


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def format_info(info: dict) -> str:
    src = info["source"] + (f": pip package {info['package']}, original {info['hub_id']}" if info["package"] else "")
    kv = f" ({info['kv_heads']} key/value)" if info["kv_heads"] != info["heads"] else ""
    lines = [
        f"{info['name']}  ({src})",
        f"  architecture    {info['architecture']} ({info['model_type']}): {info['layers']} layers, hidden "
        f"{info['hidden_size']}, {info['heads']} heads{kv}, MLP {info['intermediate_size']}, vocab {info['vocab_size']:,}",
        f"  parameters      {_count(info['parameters'])} ({info['parameters']:,})"
        + (", input embeddings tied to the output layer" if info["tied_embeddings"] else ""),
        f"  context length  {info['context_length']:,} tokens" if info["context_length"] else "  context length  unknown",
        f"  chat template   {info['chat_template']}",
        f"  license         {info['license']}",
        f"  task            {info['task']}",
        "",
    ]
    m = info["memory"]
    lines.append(f"Estimated training memory, batch {m['batch']} x length {m['length']}, {m['precision']}, AdamW (GiB):")
    lines.append(f"  {'method':<10} {'trainable':>10} {'weights':>8} {'grads':>6} {'optim':>6} {'activ.':>7} "
                 f"{'runtime':>7} {'total':>7}")
    for c in m["methods"]:
        g = c["gib"]
        lines.append(f"  {c['method']:<10} {_count(c['trainable']):>10} {g['weights']:>8.2f} {g['gradients']:>6.2f} "
                     f"{g['optimizer']:>6.2f} {g['activations']:>7.2f} {g['runtime']:>7.2f} {g['total']:>7.2f}")
    lines.append("  (an estimate from the model's shapes, whole batches in one pass: `help(tuneline.model_info)` "
                 "has the formula. LoRA's activations can exceed full tuning's: its dropout copies the input of\n"
                 "   every adapted layer (lora.dropout: 0 saves that). To fit: lower --batch / --length, or cut "
                 "batches into pieces with memory.micro_batch_tokens, as tuneline does on a CPU by default.)")
    return "\n".join(lines)
