"""tuneline export: hf / gguf / onnx from tiny runs, each proved against the run's own model,
and loaded by plain Transformers / onnxruntime in a process where tuneline cannot be imported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tuneline
from tuneline.errors import RunFailed, UserError
from tuneline.export import export_run

from conftest import synthetic_rows, write_jsonl, write_recipe

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM = "Answer with the code only."
COLOURS = ["red", "green", "blue", "amber", "violet", "black", "white", "orange", "silver", "golden"]


def chats(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        colour = COLOURS[i % len(COLOURS)]
        rows.append({"messages": [{"role": "user", "content": f"what is the code for {colour} item {i}?"},
                                  {"role": "assistant", "content": f"{colour[:3].upper()}-{i * 7 % 100:02d}"}]})
    return rows


def byte_level_tokenizer(texts: list[str]):
    """A small byte-level BPE (the GPT-2 / SmolLM2 kind) trained here, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama chat model (tied embeddings, grouped KV heads) with a byte-level BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("chat_llama")
    texts = [m["content"] for r in chats(60) for m in r["messages"]] + [SYSTEM, "You are a tiny test model."]
    tok = byte_level_tokenizer(texts * 3)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, initializer_range=0.2, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, chat_llama) -> Path:
    d = tmp_path_factory.mktemp("chat_run")
    write_jsonl(d / "train.jsonl", chats(40))
    write_jsonl(d / "test.jsonl", chats(10, offset=40))
    recipe = write_recipe(d / "recipe.yaml", task="generate", model=str(chat_llama), method="lora",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 2, "lr": 5e-3, "batch_size": 8, "max_length": 64, "log_every": 5},
                          generate={"max_new_tokens": 6, "system_prompt": SYSTEM}, eval={"max_samples": 4},
                          output=str(d / "run"))
    return tuneline.train(recipe).path


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_bert) -> Path:
    d = tmp_path_factory.mktemp("cls_run")
    write_jsonl(d / "train.jsonl", synthetic_rows(120, 1))
    write_jsonl(d / "test.jsonl", synthetic_rows(30, 2))
    recipe = write_recipe(d / "recipe.yaml", task="classify", model=str(tiny_bert), method="lora",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 3, "lr": 1e-2, "batch_size": 8, "max_length": 32, "log_every": 5},
                          output=str(d / "run"))
    return tuneline.train(recipe).path


def card_code(folder: Path) -> str:
    """The first Python block of the export's model card."""
    return re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL)[0]


def run_without_tuneline(code: str, cwd: Path) -> str:
    """Run code in a fresh interpreter where `import tuneline` fails: the export must stand alone."""
    guard = "import sys\nsys.modules['tuneline'] = None  # any import of tuneline now raises\n"
    proc = subprocess.run([sys.executable, "-c", guard + code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def assert_manifest_hashes(out: Path, manifest: dict) -> None:
    from tuneline.export.source import sha256_file

    on_disk = {str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"], name
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))


# -- onnx -----------------------------------------------------------------------------------------

def test_onnx_equals_pytorch_on_test_split_and_runs_without_tuneline(cls_run, tmp_path):
    out = tmp_path / "onnx"
    manifest = export_run(cls_run, "onnx", out)
    fig = manifest["parity"]["model.onnx"]
    assert manifest["passed"] and fig["passed"]
    assert fig["rows"] == 30 and fig["same_label"] == 30 and fig["max_prob_diff"] < 1e-4
    assert {"model.onnx", "tokenizer.json", "labels.json", "config.json", "README.md"} <= set(manifest["files"])
    assert_manifest_hashes(out, manifest)
    assert manifest["source"]["files"]["adapter/adapter_model.safetensors"]
    assert manifest["source"]["test_metrics"]["tuned"]["accuracy"] == tuneline.load_run(cls_run).evaluate()["tuned"]["accuracy"]
    # the card's snippet (tokenizers + onnxruntime only) predicts what tuneline predicts
    texts = [r["text"] for r in synthetic_rows(12, 5)]
    code = card_code(out).replace('texts = ["Arrived quickly and works perfectly."]', f"texts = {texts!r}")
    printed = run_without_tuneline(code, out)
    assert eval(printed.strip().splitlines()[-1]) == [p["label"] for p in tuneline.load_run(cls_run).predict(texts)]


# -- hf -------------------------------------------------------------------------------------------

def test_hf_classifier_loads_with_plain_transformers(cls_run, tmp_path):
    out = tmp_path / "hf"
    manifest = export_run(cls_run, "hf", out)
    assert manifest["parity"]["model"]["label_agreement"] == 1.0
    assert manifest["parity"]["model"]["max_prob_diff"] == 0.0  # a byte-for-byte copy of the weights
    assert manifest["parity"]["model"]["label_map_matches"]
    adapter = manifest["parity"]["adapter"]
    assert adapter["checked"] and adapter["passed"] and adapter["same_label"] == adapter["rows"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert_manifest_hashes(out, manifest)
    texts = [r["text"] for r in synthetic_rows(10, 9)]
    code = card_code(out).replace('["Arrived quickly and works perfectly."]', repr(texts))
    printed = run_without_tuneline(code, out)
    labels = [p["label"] for p in eval(printed.strip().splitlines()[-1])]
    assert labels == [p["label"] for p in tuneline.load_run(cls_run).predict(texts)]


def test_hf_chat_model_answers_like_the_run_without_tuneline(chat_run, chat_llama, tmp_path):
    out = tmp_path / "hf"
    manifest = export_run(chat_run, "hf", out)
    model_fig, adapter_fig = manifest["parity"]["model"], manifest["parity"]["adapter"]
    assert model_fig["max_abs_diff"] == 0.0 and model_fig["top1_agreement"] == 1.0
    assert adapter_fig["checked"] and adapter_fig["passed"]
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(chat_llama)  # a local base stays as the recipe named it
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == 6 and gen["do_sample"] is False
    assert "repetition_penalty" not in gen and "no_repeat_ngram_size" not in gen  # off in the run: not written
    assert (out / "chat_template.jinja").is_file()
    printed = run_without_tuneline(card_code(out).replace('"Hello!"', '"what is the code for red item 3?"'), out)
    run = tuneline.load_run(chat_run)
    expected = run.generate([{"role": "user", "content": "what is the code for red item 3?"}])
    assert printed.rstrip("\n").strip() == expected


def test_hf_generation_config_carries_the_loop_breakers(tmp_path):
    from types import SimpleNamespace

    from tuneline.export.hf import _decoding_defaults

    tok = SimpleNamespace(eos_token_id=2, pad_token_id=2)
    source = SimpleNamespace(decoding={"max_new_tokens": 9, "temperature": 0.0, "repetition_penalty": 1.2,
                                       "no_repeat_ngram_size": 3}, loaded=SimpleNamespace(tokenizer=tok))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "temperature": 0.7}))
    _decoding_defaults(source, tmp_path)
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["repetition_penalty"] == 1.2 and gen["no_repeat_ngram_size"] == 3
    assert gen["max_new_tokens"] == 9 and gen["do_sample"] is False and "temperature" not in gen


def test_hf_f16_halves_the_weights_within_tolerance(cls_run, tmp_path):
    out = tmp_path / "hf16"
    manifest = export_run(cls_run, "hf", out, quantize=["f16"])
    fig = manifest["parity"]["model"]
    assert fig["passed"] and 0 < fig["max_prob_diff"] < 1e-2
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    f32 = (cls_run / "model" / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.6 * f32


# -- gguf -----------------------------------------------------------------------------------------

def test_gguf_round_trip_through_transformers_loader(chat_run, tmp_path):
    from gguf import GGUFReader

    out = tmp_path / "gguf"
    manifest = export_run(chat_run, "gguf", out, quantize=["f16", "q8_0"])
    for name in ("model-f16.gguf", "model-q8_0.gguf"):
        fig = manifest["parity"][name]
        assert fig["passed"], fig
        assert fig["tokenizer"]["identical_ids"] == fig["tokenizer"]["texts"] > 0
    assert manifest["parity"]["model-f16.gguf"]["mean_kl"] < manifest["parity"]["model-q8_0.gguf"]["mean_kl"]
    assert_manifest_hashes(out, manifest)

    reader = GGUFReader(str(out / "model-q8_0.gguf"))

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama" and field("llama.block_count") == 2
    assert field("llama.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.eos_token_id") == 2 and field("tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>" in field("tokenizer.chat_template")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied to token_embd, as llama.cpp expects

    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and '{{ if eq .Role "user" }}<|im_start|>user' in modelfile
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER num_predict 6" in modelfile and "PARAMETER temperature 0" in modelfile
    assert "PARAMETER repeat_penalty 1\n" in modelfile  # Ollama's default (1.1) would change the answers
    # llama.cpp reproduces the run only with the GGUF's own template (its built-in ChatML drops the system prompt)
    assert "-cnv --jinja" in modelfile and "-cnv --jinja" in (out / "README.md").read_text()


def test_llama_cpp_loads_the_gguf_and_answers_like_the_run(chat_run, tmp_path):
    """llama.cpp itself, where llama-cpp-python is installed (not a CI dependency: it builds from source)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np
    import torch

    from tuneline.export.compare import LogitsAgreement, causal_logits
    from tuneline.export.source import open_source

    export_run(chat_run, "gguf", tmp_path / "gguf")
    source = open_source(chat_run)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "gguf" / "model-f16.gguf"), n_ctx=256, logits_all=True,
                          verbose=False, n_threads=2)
    agreement = LogitsAgreement()
    for ids in source.sample_token_ids(6, 128):
        text = source.loaded.tokenizer.decode(ids)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        ours = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
        agreement.add(causal_logits(source.loaded.model, ids), ours)
    fig = agreement.result()
    assert fig["mean_kl"] < 1e-3 and fig["top1_agreement"] >= 0.95, fig
    # the chat template travels in the GGUF: llama.cpp renders the conversation as the run does
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "what is the code for red item 3?"}]
    chat = llama_cpp.Llama(model_path=str(tmp_path / "gguf" / "model-f16.gguf"), n_ctx=256, verbose=False, n_threads=2)
    answer = chat.create_chat_completion(messages=messages, max_tokens=6, temperature=0.0, top_k=1)
    # a random tiny model emits stray UTF-8 byte tokens: Transformers shows them as U+FFFD, llama.cpp drops them
    expected = source.loaded.generate(messages[1:]).replace("\ufffd", "")
    assert answer["choices"][0]["message"]["content"].strip() == expected


def test_qk_permutation_is_what_transformers_gguf_loader_undoes():
    import numpy as np
    import torch
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from tuneline.export.llama_gguf import _permute

    w = torch.randn(6 * 8, 16)  # 6 KV heads of dim 8
    undo = LlamaTensorProcessor(config={"num_attention_heads": 12, "num_key_value_heads": 6})
    back = undo._reverse_permute_weights(_permute(w, 6).numpy(), 12, 6)
    assert np.array_equal(back, w.numpy()) and not torch.equal(_permute(w, 6), w)


def test_failed_parity_writes_nothing_and_keeps_the_old_export(chat_run, tmp_path, monkeypatch):
    from tuneline.export import llama_gguf

    out = tmp_path / "gguf"
    out.mkdir()
    (out / "keep.txt").write_text("old export")
    monkeypatch.setitem(llama_gguf.TOLERANCE, "f16", {"mean_kl": -1.0})
    with pytest.raises(RunFailed, match="not written"):
        export_run(chat_run, "gguf", out, overwrite=True, samples=2)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["gguf"]  # no temporary folder left behind


def test_gguf_refuses_what_it_cannot_write(tmp_path, tiny_llama):
    from transformers import AutoConfig, BertConfig

    from tuneline.export.llama_gguf import check_exportable

    with pytest.raises(UserError, match="byte-level BPE"):  # tiny_llama carries a WordPiece tokenizer
        check_exportable(AutoConfig.from_pretrained(str(tiny_llama)), tiny_llama)
    with pytest.raises(UserError, match="Llama-family"):
        check_exportable(BertConfig(), tiny_llama)


# -- errors, card ---------------------------------------------------------------------------------

def test_user_errors(cls_run, chat_run, tmp_path):
    with pytest.raises(UserError, match="task generate"):
        export_run(cls_run, "gguf", tmp_path / "x")
    with pytest.raises(UserError, match="classifiers"):
        export_run(chat_run, "onnx", tmp_path / "x")
    with pytest.raises(UserError, match="allowed: f16, q8_0"):
        export_run(chat_run, "gguf", tmp_path / "x", quantize=["q4_0"])
    with pytest.raises(UserError, match="allowed: hf, gguf, onnx"):
        export_run(chat_run, "tflite", tmp_path / "x")
    with pytest.raises(UserError, match="replace the run folder"):
        export_run(cls_run, "hf", cls_run.parent, overwrite=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="--overwrite"):
        export_run(cls_run, "hf", tmp_path / "taken")
    with pytest.raises(UserError, match="run folder not found"):
        export_run(tmp_path / "nope", "hf", tmp_path / "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_cli_exit_codes_and_summary(cls_run, tmp_path):
    cmd = [sys.executable, "-m", "tuneline", "export", str(cls_run), "--out", str(tmp_path / "o")]
    bad = subprocess.run(cmd + ["--format", "gguf"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    ok = subprocess.run(cmd + ["--format", "hf"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "same label on 30/30 rows" in ok.stdout and "model.safetensors" in ok.stdout


def test_run_model_card_is_kept_and_extended(cls_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    (run / "MODEL_CARD.md").write_text("# Review sentiment\n\nThe lead's card.\n")
    manifest = export_run(run, "hf", tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("# Review sentiment\n\nThe lead's card.") and "## This export (hf)" in card
    assert "same label on 30/30 rows" in card and "MODEL_CARD.md" in manifest["model_card"]["origin"]


def test_own_card_has_metrics_data_and_usage(chat_run, tmp_path):
    run = tmp_path / "run"  # a run without MODEL_CARD.md: the export writes its own card
    shutil.copytree(chat_run, run)
    (run / "MODEL_CARD.md").unlink()
    manifest = export_run(run, "hf", tmp_path / "hf", samples=2)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation")
    assert "| loss |" in card and "train.jsonl" in card and SYSTEM in card
    assert "## This export (hf)" in card and manifest["model_card"]["origin"].startswith("written by")


def test_hf_usage_of_a_chat_model_with_and_without_an_adapter():
    """The card's usage snippet is there for a fully tuned chat model too (it once came out empty
    without adapter/), and names adapter/ when there is one."""
    from tuneline.export.card import usage
    from tuneline.tasks import get_task

    task = get_task("generate")
    full = usage("hf", task, {"method": "full"}, {})
    assert "AutoModelForCausalLM.from_pretrained" in full and "adapter/" not in full
    lora = usage("hf", task, {"method": "lora", "adapter_dir": "adapter"}, {})
    assert "AutoModelForCausalLM.from_pretrained" in lora and "adapter/" in lora and "4 bits" not in lora
    assert "4 bits" in usage("hf", task, {"method": "qlora", "adapter_dir": "adapter"}, {})
