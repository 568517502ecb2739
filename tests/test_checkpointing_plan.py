"""memory.gradient_checkpointing (training/checkpointing.py): the pure rule against brute force,
the measurement on a real model, per-block flags that leave gradients unchanged, and the plan a
run makes under memory.limit_gib on the CPU (a GPU's free memory takes that place there)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tuneline.recipe import recipe_from_dict
from tuneline.training import checkpointing
from tuneline.training.checkpointing import ActivationCost, blocks_to_checkpoint, set_checkpointed


def _kept(cost: ActivationCost, k: int) -> float:
    return (cost.other + sum(cost.kept_checkpointed[:k]) + sum(cost.per_block[k:])
            + max(cost.per_block[:k], default=0.0))


def test_the_fewest_blocks_that_fit_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 6)
        per = [rng.uniform(50, 200) for _ in range(n)]
        cost = ActivationCost(per, [rng.uniform(1, 10) for _ in range(n)], rng.uniform(0, 100))
        tokens, room = rng.randint(1, 5000), rng.uniform(0, 5000 * 900)
        k = blocks_to_checkpoint(cost, tokens, room)
        fitting = [j for j in range(n + 1) if tokens * _kept(cost, j) <= room]
        assert k == (min(fitting) if fitting else n)


def test_everything_fits_means_none_and_nothing_fits_means_all():
    cost = ActivationCost([100.0, 100.0], [4.0, 4.0], 10.0)
    assert blocks_to_checkpoint(cost, 100, 210 * 100) == 0
    assert blocks_to_checkpoint(cost, 100, 1.0) == 2
    # one checkpointed block saves 96 per token but adds a recompute of 100: two are needed
    assert blocks_to_checkpoint(cost, 100, 200 * 100) == 2


def _llama_lora(tiny_llama, checkpointing_on: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    if checkpointing_on:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))


def test_measure_counts_each_block_and_what_a_checkpointed_one_keeps(tiny_llama):
    model = _llama_lora(tiny_llama, True)
    model.train()
    ids = torch.randint(0, 100, (2, 32))
    cost = checkpointing.measure(lambda: model(input_ids=ids, labels=ids).loss, ids.numel(), model)
    blocks = checkpointing.checkpointable_blocks(model)
    assert len(cost.per_block) == len(blocks) >= 2
    hidden = model.config.hidden_size * 4  # fp32 bytes of a block's input, per token
    assert all(k == pytest.approx(hidden) for k in cost.kept_checkpointed)
    assert all(p > 4 * k for p, k in zip(cost.per_block, cost.kept_checkpointed))
    assert cost.other > 0  # the output layer and the loss
    assert all(b.gradient_checkpointing for b in blocks)  # flags given back


def test_checkpointing_some_blocks_keeps_the_gradients(tiny_llama):
    grads = []
    for k in (None, 1, 2):
        model = _llama_lora(tiny_llama, k is not None)
        if k is not None:
            assert set_checkpointed(model, k) == k
            flags = [b.gradient_checkpointing for b in checkpointing.checkpointable_blocks(model)]
            assert flags == [i < k for i in range(len(flags))]
        model.train()
        torch.manual_seed(5)
        ids = torch.randint(0, 100, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for other in grads[1:]:
        for n in grads[0]:
            torch.testing.assert_close(grads[0][n], other[n], rtol=1e-5, atol=1e-7)


def test_plan_takes_numbers_as_given_and_auto_under_fsdp_checkpoints_all(tiny_llama):
    def memory(v):
        return recipe_from_dict({"task": "classify", "model": "m", "data": {"train": "x"},
                                 "memory": {"gradient_checkpointing": v}}).memory

    model = _llama_lora(tiny_llama, True)

    def probe():
        raise AssertionError("nothing to measure here")

    cpu = torch.device("cpu")
    assert checkpointing.plan(memory(True), model, cpu, probe, 1000, 0)[0] == 2
    assert checkpointing.plan(memory(1), model, cpu, probe, 1000, 0)[0] == 1
    assert checkpointing.plan(memory(9), model, cpu, probe, 1000, 0)[0] == 2
    k, line = checkpointing.plan(memory("auto"), model, cpu, probe, 1000, 0, sharded=True)
    assert k == 2 and "auto under FSDP" in line
    assert checkpointing.plan(memory("auto"), model, cpu, probe, 1000, 0) == (0, "")  # a CPU, no limit


def test_recipe_values():
    def mem(v):
        return recipe_from_dict({"task": "classify", "model": "m", "data": {"train": "x"},
                                 "memory": {"gradient_checkpointing": v}}).memory

    assert mem("auto").may_checkpoint("cuda") and not mem("auto").may_checkpoint("cpu")
    assert mem(True).may_checkpoint("cpu") and not mem(False).may_checkpoint("cuda")
    assert mem(3).may_checkpoint("cpu") and not mem(0).may_checkpoint("cuda")
    with pytest.raises(Exception, match="use auto, true, false, or a number"):
        mem("sometimes")
    with pytest.raises(Exception, match="use auto, true, false, or a number"):
        mem(-1)


@pytest.mark.parametrize("setting,limit,expect", [("auto", None, None), (1, None, 1), ("auto", 0.001, "all")])
def test_a_run_plans_its_checkpointing(tmp_path, tiny_llama, capsys, setting, limit, expect):
    """On the CPU auto checkpoints nothing without memory.limit_gib (no measurement); a number
    is taken as it is; a limit below what the run needs checkpoints every block and says so."""
    import tuneline
    from conftest import write_jsonl, write_recipe

    rows = [{"messages": [{"role": "user", "content": f"question {i} " * 3},
                          {"role": "assistant", "content": f"answer {i} " * 4}]} for i in range(24)]
    write_jsonl(tmp_path / "chats.jsonl", rows)
    memory = {"gradient_checkpointing": setting, **({"limit_gib": limit} if limit else {})}
    recipe = write_recipe(tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="lora",
                          data={"train": "chats.jsonl"}, train={"max_steps": 2, "batch_size": 4, "max_length": 64},
                          lora={"r": 4, "alpha": 8}, memory=memory, eval={"max_samples": 1},
                          generate={"max_new_tokens": 2}, output=str(tmp_path / "run"))
    result = tuneline.train(recipe)
    out = capsys.readouterr().out
    assert json.loads((result.path / "run.json").read_text())["status"] == "completed"
    if expect is None:
        assert "checkpointing" not in out.lower()
    elif expect == "all":
        assert "Activations:" in out and "checkpointing 2 of 2 blocks" in out and "may not fit" in out, out
    else:
        assert f"Activation checkpointing: {expect} of 2 blocks" in out, out



def test_room_on_a_gpu_is_its_free_memory_or_the_limit(monkeypatch):
    """The room auto plans under, read from torch.cuda (mocked: no GPU here)."""
    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 12 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * gib)
    cuda = torch.device("cuda")
    # free 30 + cached-but-unused 2, less 1 of optimizer state to come, times the margin
    assert checkpointing.room_bytes(cuda, None, gib) == pytest.approx(31 * gib * checkpointing.SAFETY)
    # a limit of 20 GiB with 10 resident leaves 10, less the 1 to come
    assert checkpointing.room_bytes(cuda, 20, gib) == pytest.approx(9 * gib * checkpointing.SAFETY)
    assert checkpointing.room_bytes(torch.device("cpu"), None, gib) is None


def test_the_dry_run_plans_the_same_checkpointing(tmp_path, tiny_llama):
    import tuneline
    from conftest import write_jsonl, write_recipe

    rows = [{"messages": [{"role": "user", "content": f"question {i} " * 3},
                          {"role": "assistant", "content": f"answer {i} " * 4}]} for i in range(24)]
    write_jsonl(tmp_path / "chats.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="lora",
                          data={"train": "chats.jsonl"}, train={"max_steps": 2, "batch_size": 4, "max_length": 64},
                          lora={"r": 4, "alpha": 8}, memory={"limit_gib": 0.001}, output=str(tmp_path / "run"))
    plan = tuneline.train(recipe, dry_run=True)
    assert plan["checkpointed_blocks"] == 2 and "checkpointing 2 of 2 blocks" in plan["checkpointing"]
    assert not (tmp_path / "run").exists()


def test_the_measurement_leaves_the_run_unchanged(tmp_path, tiny_llama):
    """auto's probe forward draws no random numbers from the run's streams: every block
    checkpointed by a measured plan trains exactly as every block checkpointed by `true`."""
    import tuneline
    from conftest import write_jsonl, write_recipe

    rows = [{"messages": [{"role": "user", "content": f"question {i} " * 3},
                          {"role": "assistant", "content": f"answer {i} " * 4}]} for i in range(24)]
    write_jsonl(tmp_path / "chats.jsonl", rows)
    losses = []
    for name, memory in (("true", {"gradient_checkpointing": True}), ("auto", {"limit_gib": 0.001})):
        recipe = write_recipe(tmp_path / f"{name}.yaml", task="generate", model=str(tiny_llama), method="lora",
                              data={"train": "chats.jsonl"},
                              train={"max_steps": 3, "batch_size": 4, "max_length": 64, "log_every": 1},
                              lora={"r": 4, "alpha": 8, "dropout": 0.2}, memory=memory, eval={"max_samples": 1},
                              generate={"max_new_tokens": 2}, output=str(tmp_path / name))
        path = tuneline.train(recipe).path
        losses.append([json.loads(x)["loss"] for x in (path / "metrics.jsonl").read_text().splitlines()
                       if '"train"' in x])
    assert losses[0] == losses[1]
