"""method: qlora (training/quantized_base.py): the blocks' frozen linear layers in 4 bits under a
LoRA adapter. Checked on the CPU, where bitsandbytes runs in plain torch: what is stored, that the
adapter's loss and gradients are LoRA's on the dequantized weights, that a run merges into exactly
those weights, and the refusals."""

from __future__ import annotations

import json
import sys

import bitsandbytes as bnb  # a dev dependency (tuneline[qlora]): the suite fails rather than skips without it
import pytest
import torch
from safetensors.torch import load_file

import tuneline
from conftest import say_chats, write_jsonl
from tuneline.errors import UserError
from tuneline.recipe import recipe_from_dict
from tuneline.training.fused_lora import fuse_lora
from tuneline.training.loop import Callback
from tuneline.training.methods import apply_method, check_method, count_parameters
from tuneline.training.quantized_base import BYTES_PER_WEIGHT, block_linears, dequantize_base, quantize_base


def _recipe(model, method="qlora", **train):
    return recipe_from_dict({"task": "generate", "model": str(model), "method": method, "data": {"train": "x"},
                             "train": {"precision": "fp32", **train}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})


def _load(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)


def _task():
    from tuneline.tasks import get_task

    return get_task("generate")


def test_the_blocks_linear_layers_are_stored_in_4_bits(tiny_llama):
    plain = _load(tiny_llama)
    linears = sum(lin.weight.numel() for _, _, lin in block_linears(plain))
    model = apply_method(_load(tiny_llama), _recipe(tiny_llama), _task())
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # every projection of both blocks
    # embeddings and norms as loaded; the counts are of weights, not of packed bytes
    assert torch.equal(model.get_input_embeddings().weight, plain.get_input_embeddings().weight)
    assert count_parameters(model)[1] == count_parameters(plain)[1] + count_parameters(model)[0]
    # two codes a byte and an 8-bit scale a block of 64 (plus a few constants per layer): ~0.52, not 4
    codes = sum(m.weight.data.numel() * m.weight.data.element_size() for m in quantized)
    scales = sum(m.weight.quant_state.absmax.numel() * m.weight.quant_state.absmax.element_size() for m in quantized)
    assert codes == linears / 2 and scales == linears / 64
    assert BYTES_PER_WEIGHT == pytest.approx(0.516, abs=1e-3)
    ids = torch.randint(5, 900, (2, 16))
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95  # NF4 rounding, not noise


def test_the_adapter_learns_what_lora_learns_on_the_dequantized_weights(tiny_llama):
    """Same loss and adapter gradients as plain LoRA over a base holding the 4-bit values: the
    4-bit path changes how the base is stored, not what is computed (the lean layers and the fused
    adapters swapped in, as the loop trains)."""
    from tuneline.training.loop import swap_training_layers

    torch.manual_seed(0)
    q = apply_method(_load(tiny_llama), _recipe(tiny_llama), _task())
    reference = quantize_base(_load(tiny_llama), _recipe(tiny_llama))  # the same codes: quantizing is deterministic
    assert dequantize_base(reference) == 14
    torch.manual_seed(0)
    plain = apply_method(reference, _recipe(tiny_llama, method="lora"), _task())
    for model in (q, plain):
        swap_training_layers(model, "cpu", compiled=False)
        for n, p in model.named_parameters():  # a trained adapter: B no longer zero
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(n)))
        model.train()
    assert fuse_lora(q) == 0  # swapped already: PEFT's 4-bit LoRA layers take the fused path too
    assert sum(type(m).__name__ == "FusedLinear4bit" for m in q.modules()) == 14
    ids = torch.randint(5, 900, (2, 16))
    losses = []
    for model in (q, plain):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in (q, plain)]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 28
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_a_run_merges_the_adapter_into_the_weights_it_trained_with(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "train.jsonl", say_chats(40))
    recipe = recipe_from_dict({
        "task": "generate", "model": str(tiny_llama), "method": "qlora", "data": {"train": str(tmp_path / "train.jsonl")},
        "train": {"epochs": 2, "batch_size": 8, "max_length": 64, "lr": 3e-3, "precision": "fp32", "log_every": 1},
        "lora": {"r": 4, "alpha": 8}, "generate": {"max_new_tokens": 2},
        "eval": {"max_samples": 2, "forgetting": {"enabled": False}}, "output": str(tmp_path / "run")})
    run = tuneline.train(recipe, force=True).path
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "train"]
    assert losses[-1] < losses[0]
    merged = load_file(str(run / "model" / "model.safetensors"))
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    original = _load(tiny_llama).state_dict()
    assert {v.dtype for v in merged.values()} == {torch.float32}
    assert torch.equal(merged["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    # each projection: the NF4 values of the original weight plus the adapter's delta, in fp32
    name = "model.layers.1.self_attn.q_proj"
    state = bnb.functional.quantize_4bit(original[name + ".weight"], blocksize=64, compress_statistics=True,
                                         quant_type="nf4")
    base = bnb.functional.dequantize_4bit(*state)
    a = adapter[f"base_model.model.{name}.lora_A.weight"]
    b = adapter[f"base_model.model.{name}.lora_B.weight"]
    torch.testing.assert_close(merged[name + ".weight"], base + (8 / 4) * b @ a, rtol=0, atol=1e-6)
    assert not torch.equal(merged[name + ".weight"], base)  # the adapter moved it
    info = json.loads((run / "tuneline.json").read_text())
    assert info["method"] == "qlora" and info["merged"]
    assert (run / "eval.json").exists() and (run / "report.html").exists()
    # the export checks adapter/ on the base in 4 bits (what it trained on) against model/
    manifest = tuneline.export_run(run, "hf", tmp_path / "hf", samples=2)
    adapter = manifest["parity"]["adapter"]
    assert adapter["checked"] and adapter["passed"] and adapter["max_abs_diff"] < 1e-4, adapter
    assert "trained on the base in 4 bits" in (tmp_path / "hf" / "README.md").read_text()


def test_fsdp_is_refused_with_the_key_and_the_fix(tiny_llama):
    from transformers import AutoConfig

    recipe = _recipe(tiny_llama, sharding="fsdp")
    with pytest.raises(UserError, match="train.sharding: fsdp.*sharding: none"):
        check_method(recipe, AutoConfig.from_pretrained(str(tiny_llama)))


def test_without_bitsandbytes_the_error_says_how_to_install_it(tiny_llama, monkeypatch):
    from transformers import AutoConfig

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install 'tuneline\[qlora\]'.*method: lora"):
        check_method(_recipe(tiny_llama), AutoConfig.from_pretrained(str(tiny_llama)))


def test_compiled_blocks_trace_the_4_bit_layers_without_a_graph_break(tiny_llama, monkeypatch):
    from torch._dynamo.utils import counters

    from tuneline.training import compiling

    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")  # the same graphs, no code generation
    torch._dynamo.reset()
    counters.clear()
    model = apply_method(_load(tiny_llama), _recipe(tiny_llama), _task()).train()
    ids = torch.randint(5, 900, (2, 16))
    eager = model(input_ids=ids, labels=ids).loss
    try:
        compiling.compile_blocks(model, enabled=True, sharded=False)
        compiled = model(input_ids=ids, labels=ids).loss
        compiled.backward()
        assert not counters["graph_break"]
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


class _CrashAtStep(Callback):
    def on_log(self, trainer, record):
        if record.get("step") == 3:
            raise RuntimeError("simulated crash")


def test_a_crashed_run_resumes_to_the_adapter_of_an_uninterrupted_one(tmp_path, tiny_llama, capsys):
    write_jsonl(tmp_path / "train.jsonl", say_chats(32))

    def recipe(name):
        return recipe_from_dict({
            "task": "generate", "model": str(tiny_llama), "method": "qlora",
            "data": {"train": str(tmp_path / "train.jsonl")},
            "train": {"max_steps": 4, "batch_size": 8, "max_length": 64, "lr": 3e-3, "precision": "fp32",
                      "log_every": 1, "save_every": 2, "eval_every": 2},
            "lora": {"r": 4, "alpha": 8}, "generate": {"max_new_tokens": 2},
            "eval": {"max_samples": 2, "forgetting": {"enabled": False}}, "output": str(tmp_path / name)})

    whole = tuneline.train(recipe("whole"), force=True).path
    with pytest.raises(Exception, match="simulated crash"):
        tuneline.train(recipe("cut"), force=True, callbacks=[_CrashAtStep()])
    capsys.readouterr()
    cut = tuneline.train(recipe("cut"), force=True, resume=True).path
    assert "Resuming from step 2 of 4." in capsys.readouterr().out  # the adapter of step 2 over the 4-bit base
    a = load_file(str(whole / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(cut / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
