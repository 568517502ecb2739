"""Exports of short runs on the real built-in models (minutes). Marked slow; `make test` runs them."""

from pathlib import Path

import pytest

import tuneline
from tuneline.export import export_run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_minilm_classifier_to_onnx_and_hf(tmp_path):
    run = tuneline.train(ROOT / "examples" / "reviews" / "recipe.yaml", output=tmp_path / "run", overrides=[
        "train.max_steps=8", "train.eval_every=8"]).path
    onnx = export_run(run, "onnx", tmp_path / "onnx")
    fig = onnx["parity"]["model.onnx"]
    assert onnx["passed"] and fig["rows"] == 120 and fig["same_label"] == 120
    hf = export_run(run, "hf", tmp_path / "hf")
    assert hf["passed"] and hf["parity"]["model"]["max_prob_diff"] == 0.0


def test_smollm2_chat_model_to_gguf_round_trip(tmp_path):
    run = tuneline.train(ROOT / "examples" / "support" / "recipe.yaml", output=tmp_path / "run", overrides=[
        "train.max_steps=2", "data.max_rows=40", "eval.max_samples=2", "generate.max_new_tokens=8",
        "train.max_length=128"]).path
    # q8_0 only: f16 is covered on the tiny model, and each Transformers GGUF load costs ~30 s here
    manifest = export_run(run, "gguf", tmp_path / "gguf", quantize=["q8_0"], samples=3)
    fig = manifest["parity"]["model-q8_0.gguf"]
    assert fig["passed"], fig
    assert fig["tokenizer"]["identical_ids"] == 3  # llama.cpp's 'gpt-2' pre-tokenizer = the run's tokenizer
    assert manifest["details"]["tokenizer_pre"] == "gpt-2"
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in modelfile and "Northwind Goods" in modelfile
