"""`tuneline models info`: exact parameter counts from a weightless (meta) model, and a memory
estimate that follows its documented formula."""

import json
import subprocess
import sys

import pytest

from tuneline.errors import UserError
from tuneline.model_info import GIB, RUNTIME_BYTES, format_info, model_info


def test_decoder_info_and_memory_formula(tiny_llama):
    info = model_info(str(tiny_llama), batch=4, length=64)
    assert info["task"] == "generate" and info["architecture"] == "LlamaForCausalLM"
    assert info["layers"] == 2 and info["hidden_size"] == 32 and info["kv_heads"] == 2
    assert info["context_length"] == 256 and info["license"].startswith("unknown")
    # the parameter count equals the real model's
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    assert info["parameters"] == sum(p.numel() for p in real.parameters())
    P, h, i, d_kv, L = info["parameters"], 32, 64, 2 * 8, 2
    full, lora, qlora, freeze = info["memory"]["methods"]
    assert full["trainable"] == full["total"] == info["parameters"]
    assert 0 < lora["trainable"] < full["trainable"] and freeze["trainable"] < full["trainable"]
    # qlora: LoRA's adapter over the blocks' projections stored at ~0.52 bytes a weight instead of 4
    from tuneline.training.quantized_base import BYTES_PER_WEIGHT

    projections = L * (h * h + 2 * h * 16 + h * h + 3 * h * 64)  # q, k+v (2 kv heads of 8), o, gate+up+down
    assert qlora["trainable"] == lora["trainable"] and qlora["bytes"]["activations"] == lora["bytes"]["activations"]
    assert qlora["bytes"]["weights"] == int(lora["bytes"]["weights"] - (4 - BYTES_PER_WEIGHT) * projections)
    # full: weights 4P, gradients 4P, AdamW 8P; activations by the formula (gated MLP, no attention dropout)
    V, tokens = 30522, 4 * 64
    b = full["bytes"]
    assert (b["weights"], b["gradients"], b["optimizer"]) == (4 * P, 4 * P, 8 * P)
    act = tokens * (L * (8 * h + 2 * d_kv + 4 * i) + 2 * h) * 4 + tokens * V * 12
    assert b["activations"] == act and b["total"] == 16 * P + act + RUNTIME_BYTES
    assert full["gib"]["total"] == pytest.approx(b["total"] / GIB, abs=0.001)
    # LoRA keeps dropout copies of adapted inputs: more activation memory than full tuning;
    # freeze keeps activations of its 2 trained blocks only (here: all of them)
    assert lora["bytes"]["activations"] > b["activations"] and lora["bytes"]["optimizer"] < b["optimizer"]
    assert freeze["bytes"]["activations"] == b["activations"]
    # twice the batch, twice the activations; bf16 halves the block activations, not the fp32 logits
    big = model_info(str(tiny_llama), batch=8, length=64)["memory"]["methods"][0]["bytes"]
    assert big["activations"] == 2 * b["activations"]
    half = model_info(str(tiny_llama), batch=4, length=64, precision="bf16")["memory"]["methods"][0]["bytes"]
    assert half["activations"] == act - tokens * (L * (8 * h + 2 * d_kv + 4 * i) + 2 * h) * 2


def test_encoder_is_a_classifier_with_a_license_from_its_card(tiny_bert, tmp_path):
    import shutil

    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# A tiny BERT\n")
    info = model_info(str(folder), batch=2, length=32)
    assert info["task"] == "classify" and info["license"] == "mit" and info["chat_template"] == "none"
    full = info["memory"]["methods"][0]
    # BERT's attention dropout materialises the attention probabilities: 2 * heads * length per token and block
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(folder))
    h, i, heads, L, tokens = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_hidden_layers, 64
    per_block = 8 * h + 2 * h + 2 * i + 2 * heads * 32
    assert full["bytes"]["activations"] == tokens * (L * per_block + 2 * h) * 4


def test_cli_prints_and_rejects_bad_input(tiny_llama):
    from typer.testing import CliRunner

    from tuneline.cli import app

    out = CliRunner().invoke(app, ["models", "info", str(tiny_llama), "--batch", "2", "--length", "32", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["memory"]["batch"] == 2 and [m["method"] for m in data["memory"]["methods"]] == \
        ["full", "lora r=8", "qlora r=8", "freeze"]
    text = format_info(data)
    assert "Estimated training memory, batch 2 x length 32" in text and "chat template" in text
    assert "lora r=8" in text and "context length  256 tokens" in text
    bad = subprocess.run([sys.executable, "-m", "tuneline", "models", "info", "no-such-model"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: model: 'no-such-model'" in bad.stderr
    with pytest.raises(UserError, match="--task"):
        model_info(str(tiny_llama), task="translate")


def test_model_cards_name_the_hub_id_of_a_built_in(tmp_path):
    from tuneline.models import CATALOG, hub_id

    # the Hugging Face convention: base_model is where the weights came from, not our alias
    assert hub_id("minilm-l6") == CATALOG["minilm-l6"].hub_id and "/" in hub_id("minilm-l6")
    assert hub_id("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
    assert hub_id(str(tmp_path)) is None  # a local folder has no public id


def test_gguf_conversion_announced_on_stderr(tmp_path, monkeypatch, capsys):
    """The one-time GGUF conversion (a long pause on a fresh home) says what and where, on stderr:
    stdout may be a --json answer (`models info --json`)."""
    import transformers

    from tuneline import models

    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def stop(*args, **kwargs):
        raise RuntimeError("conversion stopped by the test")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", stop)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        models.convert_gguf(gguf)
    out, err = capsys.readouterr()
    assert out == ""
    assert "Converting m.gguf to safetensors once into" in err and str(tmp_path / "home" / "models") in err
    assert "later runs reuse it" in err
    assert not list((tmp_path / "home" / "models").iterdir())  # nothing half-written left behind
