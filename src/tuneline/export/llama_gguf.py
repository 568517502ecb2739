"""GGUF for Llama-family chat models, written with the `gguf` package's writer.

What goes into the file follows llama.cpp's convert_hf_to_gguf.py for `LlamaForCausalLM`:
the hyperparameters under `llama.*`, tensors renamed to GGUF's names (gguf.TensorNameMap),
the Q and K projections permuted back to the interleaved rotary layout llama.cpp expects,
1-D tensors (norms) kept in F32, and a byte-level BPE vocabulary with its merges, token
types, special token ids and chat template. We write the file from the loaded model
rather than running llama.cpp's script: it is not a package, and the merged model is
already in memory.

The proof is a round trip: Transformers' own GGUF loader reads the file back (undoing the
permutation and dequantizing), and its logits are compared with the source model's on
sample conversations from the run's test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from .compare import LogitsAgreement, causal_logits, within

MODELS = "chat models"  # what the format is for, in the error for a task without it
QUANTIZATIONS = ("f16", "q8_0")

# Agreement the round trip must reach, per quantization. Bounds on the next-token distribution
# (KL) and on how often the top token agrees; absolute logit differences are reported, not
# gated, because they scale with the model's logits. Measured on SmolLM2-135M (see
# docs/ARCHITECTURE.md): f16 about 1e-5 KL and 99.9 % top-1, q8_0 about 1e-3 KL and 98 %.
TOLERANCE = {
    "f16": {"mean_kl": 1e-3, "min_top1_agreement": 0.99},
    "q8_0": {"mean_kl": 2e-2, "min_top1_agreement": 0.95},
}

# tokenizer.json pre-tokenizers, and the name llama.cpp gives to the same splitting
# (`tokenizer.ggml.pre`). Recognised by structure: llama.cpp's own converter recognises them
# by hashing the tokens of a test string, a table we would have to copy.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    if not pre:
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # GPT-2's regex inside ByteLevel
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        kinds = [p.get("type") for p in parts]
        if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
            return "smollm"  # SmolLM's hub tokenizer: single digits, then GPT-2's regex
        if kinds == ["Split", "ByteLevel"] and parts[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT \
                and not parts[1].get("use_regex", True):
            return "llama-bpe"  # Llama 3
    return None


def _tokenizer_json(model_dir: Path) -> dict:
    f = model_dir / "tokenizer.json"
    if not f.is_file():
        raise UserError(f"{model_dir}: no tokenizer.json; GGUF export needs a fast (tokenizers) tokenizer")
    return json.loads(f.read_text(encoding="utf-8"))


def check_exportable(config, model_dir: Path) -> str:
    """Raise a UserError for what this writer does not cover; return the pre-tokenizer name."""
    if config.model_type != "llama":
        raise UserError(f"--format gguf: written for Llama-family models; this run's model is "
                        f"{config.model_type!r}. Use --format hf")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("--format gguf: Llama models with attention or MLP biases are not covered; use --format hf")
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"--format gguf: rope scaling {rope.get('rope_type')!r} is not covered; use --format hf")
    tok = _tokenizer_json(model_dir)
    model = tok.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (tok.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError(f"{model_dir}/tokenizer.json: GGUF export covers byte-level BPE tokenizers (GPT-2 style, as "
                        f"SmolLM2 and Llama 3 use); this one is {model.get('type')} with decoder "
                        f"{(tok.get('decoder') or {}).get('type')}. Use --format hf")
    pre = _pre_tokenizer_name(tok.get("pre_tokenizer"))
    if pre is None:
        raise UserError(f"{model_dir}/tokenizer.json: pre-tokenizer {json.dumps(tok.get('pre_tokenizer'))[:200]} has no "
                        f"llama.cpp equivalent known here (gpt-2, smollm, llama-bpe); use --format hf")
    return pre


def _rope(config) -> dict:
    # Transformers 5 keeps theta and type in rope_parameters; older versions in rope_theta / rope_scaling.
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    scaling = getattr(config, "rope_scaling", None)
    if scaling and "rope_type" not in params:
        params["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    return params


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Transformers keeps each head's rotary halves apart; llama.cpp wants them interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab(tokenizer, vocab_size: int):
    """Tokens and token types, id by id, padded to the model's vocabulary size."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds(tokenizer) -> tuple[bool, bool]:
    """Whether the tokenizer puts BOS / EOS around plain text (llama.cpp must do the same)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id is not None and len(full) > len(plain) and full[0] == tokenizer.bos_token_id
    eos = tokenizer.eos_token_id is not None and len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
    return bos, eos


def _add_hparams(w, config, name: str, file_type) -> None:
    import gguf

    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    w.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_file_type(file_type)
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(head_dim)


def _add_tokenizer(w, tokenizer, model_dir: Path, pre: str, vocab_size: int) -> None:
    import gguf

    tokens, types = _vocab(tokenizer, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise UserError(f"{model_dir}/tokenizer.json: no BPE merges found; cannot describe this tokenizer in GGUF")
    add_bos, add_eos = _adds(tokenizer)
    special.add_special_token = {"bos": add_bos, "eos": add_eos}
    if tokenizer.chat_template and not special.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(w, quiet=True)


def _add_tensors(w, model, matrix_type) -> dict[str, int]:
    """Every weight under its GGUF name (q/k rows interleaved), matrices as `matrix_type`; returns
    the tensor type counts."""
    import gguf

    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # tied to token_embd: llama.cpp reuses it when output.weight is absent
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise UserError(f"--format gguf: no GGUF name for tensor {hf_name!r}; use --format hf")
        t = tensor.detach().float().cpu()
        if hf_name.endswith("q_proj.weight"):
            t = _permute(t, n_head)
        elif hf_name.endswith("k_proj.weight"):
            t = _permute(t, n_kv)
        data = t.numpy()
        qtype = gguf.GGMLQuantizationType.F32 if data.ndim <= 1 else matrix_type
        try:
            data = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:
            # rows not a multiple of the block size: llama.cpp's converter falls back to F16 too
            qtype = gguf.GGMLQuantizationType.F16
            data = gguf.quants.quantize(data, qtype)
        w.add_tensor(new_name, data, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return counts


def write_gguf(model, tokenizer, model_dir: Path, path: Path, quantization: str, name: str, pre: str) -> dict:
    """Write one GGUF file; returns the tensor type counts."""
    import gguf

    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantization]
    matrix_type = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quantization]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hparams(w, model.config, name, file_type)
    _add_tokenizer(w, tokenizer, model_dir, pre, model.config.vocab_size)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    counts = _add_tensors(w, model, matrix_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def load_back(path: Path):
    """Model and tokenizer through Transformers' GGUF loader (dequantized to fp32)."""
    import contextlib
    import io

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The loader draws its own progress bar on stderr, past Transformers' switch for them.
    with contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


def tokenizer_agreement(source_tok, gguf_tok, texts: list[str]) -> dict:
    same = sum(source_tok(t, add_special_tokens=False)["input_ids"] == gguf_tok(t, add_special_tokens=False)["input_ids"]
               for t in texts)
    return {"texts": len(texts), "identical_ids": same}


def verify(path: Path, quantization: str, source_model, source_tok, samples: list[list[int]]) -> dict:
    """Round trip through Transformers' GGUF loader; logits compared on the sample token ids."""
    model, tok = load_back(path)
    agreement = LogitsAgreement()
    for ids in samples:
        agreement.add(causal_logits(source_model, ids), causal_logits(model, ids))
    figures = agreement.result()
    texts = [source_tok.decode(ids) for ids in samples]
    figures["tokenizer"] = tokenizer_agreement(source_tok, tok, texts)
    tolerance = TOLERANCE[quantization]
    figures["tolerance"] = tolerance
    figures["passed"] = within(figures, tolerance)
    del model
    return figures


def dtype_counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def export(source, out: Path, quantize: list[str], samples: int) -> dict:
    """model-<q>.gguf per quantization (the first is the Modelfile's), each proved by a round trip."""
    from ..runs import atomic_write_text
    from .ollama import modelfile

    model_dir = source.require_merged("--format gguf")
    model, tok = source.loaded.model, source.loaded.tokenizer
    pre = check_exportable(model.config, model_dir)
    sample_ids = source.sample_token_ids(samples, max_tokens=256)
    files, parity, tensors = [], {}, {}
    for q in quantize:
        name = f"model-{q}.gguf"
        print(f"Writing {name} ...", flush=True)
        tensors[q] = write_gguf(model, tok, model_dir, out / name, q, source.path.name, pre)
        print(f"Checking {name}: Transformers' GGUF loader vs the run's model on {len(sample_ids)} test "
              f"conversations ...", flush=True)
        parity[name] = verify(out / name, q, model, tok, sample_ids)
        files.append(name)
    atomic_write_text(out / "Modelfile", modelfile(files[0], tok, source.decoding, str(source.path)))
    files.append("Modelfile")
    return {"files": files, "parity": parity,
            "details": {"tokenizer_pre": pre, "tensor_types": {q: dtype_counts_line(c) for q, c in tensors.items()},
                        "compared_on": f"{len(sample_ids)} test conversations (chat template, reference answer), "
                                       f"{sum(map(len, sample_ids))} positions"}}
