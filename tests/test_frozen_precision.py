"""Frozen base weights of an adapter run in bf16 (training/frozen_precision.py): which runs get it, that LoRA still trains in fp32 under autocast, and that the merged
model is the fp32 one the adapter's deltas were added to at full precision."""

from __future__ import annotations

import torch

from tuneline.training.frozen_precision import cast_frozen, frozen_dtype, restore_full_precision


def test_only_adapter_runs_in_half_precision_unsharded():
    assert frozen_dtype("bf16", adapter=True, sharded=False) is torch.bfloat16
    assert frozen_dtype("fp16", adapter=True, sharded=False) is torch.float16
    assert frozen_dtype("fp32", adapter=True, sharded=False) is None
    assert frozen_dtype("bf16", adapter=False, sharded=False) is None   # full tuning
    assert frozen_dtype("bf16", adapter=True, sharded=True) is None     # FSDP


def _lora(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0))
    for n, p in model.named_parameters():  # a trained adapter: B no longer zero
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return model


def test_lora_trains_in_fp32_over_bf16_frozen_weights_and_merges_in_fp32(tiny_llama):
    model = _lora(tiny_llama)
    reference = _lora(tiny_llama)
    assert cast_frozen(model, torch.bfloat16) > 0
    dtypes = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    ids = torch.randint(5, 900, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    # merging: weights back to fp32 first, so the delta is not rounded to bf16
    restore_full_precision(model)
    merged = model.merge_and_unload()
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    for p in reference.parameters():  # the reference's base weights rounded as the cast ones were
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16).float()
    expected = reference.merge_and_unload()
    for (n, a), (_, b) in zip(merged.named_parameters(), expected.named_parameters()):
        assert torch.equal(a, b), n


def test_with_the_base_as_loaded_the_merge_adds_the_delta_to_the_exact_loaded_weights(tiny_llama):
    """What the finish does: the frozen weights get their loaded fp32 values back (not bf16's
    rounding), so adapter/ on the original base is model/."""
    from transformers import AutoModelForCausalLM

    model, reference = _lora(tiny_llama), _lora(tiny_llama)
    assert cast_frozen(model, torch.bfloat16) > 0
    load = lambda: AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)  # noqa: E731
    restored = restore_full_precision(model, load)
    assert restored == sum(1 for p in model.parameters() if not p.requires_grad)
    merged, expected = model.merge_and_unload(), reference.merge_and_unload()
    for (n, a), (_, b) in zip(merged.named_parameters(), expected.named_parameters()):
        assert torch.equal(a, b), n


def test_a_cpu_bf16_run_trains_over_bf16_frozen_weights_and_saves_an_fp32_model(tmp_path, tiny_llama, monkeypatch):
    """The loop's and finish's call points: a bf16 adapter run keeps its frozen weights in bf16 on a
    CPU as on a GPU, and still saves an fp32 model."""
    import json

    from safetensors.torch import load_file

    import tuneline
    from tuneline.training import loop

    from conftest import write_jsonl, write_recipe

    seen = []
    real = loop.frozen_dtype

    def spy(precision, adapter, sharded):
        seen.append(real(precision, adapter, sharded))
        return seen[-1]

    monkeypatch.setattr(loop, "frozen_dtype", spy)
    rows = [{"messages": [{"role": "user", "content": f"code for {i}"}, {"role": "assistant", "content": f"it is {i}"}]}
            for i in range(16)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="lora",
                          data={"train": "train.jsonl", "test": "train.jsonl"},
                          train={"max_steps": 2, "batch_size": 4, "max_length": 32, "precision": "bf16"},
                          eval={"max_samples": 2}, generate={"max_new_tokens": 2}, output=str(tmp_path / "run"))
    result = tuneline.train(recipe)
    assert seen == [torch.bfloat16]
    weights = {}
    for f in (result.path / "model").glob("*.safetensors"):
        weights.update(load_file(str(f)))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert json.loads((result.path / "run.json").read_text())["status"] == "completed"
    # adapter/ on the original base is model/: the delta went onto the loaded weights
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(result.path / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(result.path / "model"), dtype=torch.float32).eval()
    ids = torch.randint(5, 900, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
