"""Packing (memory.packing): rows laid end to end with restarting position ids train exactly as
the same rows padded: the same loss, the same gradients, the same weights after training."""

from __future__ import annotations

import json
import random

import pytest
import torch

import tuneline
from tuneline.data.batching import pack_rows, packed_batch
from tuneline.data.chat import IGNORE
from tuneline.errors import UserError
from tuneline.recipe import recipe_from_dict
from tuneline.tasks import get_task
from tuneline.tasks.generate import ChatEncoded, collate_chat

from conftest import say_chats, write_jsonl, write_recipe


def test_pack_rows_fills_sequences_and_keeps_every_row():
    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
        rows = list(range(len(lengths)))
        bins = pack_rows(rows, lengths, 64)
        assert sorted(i for b in bins for i in b) == rows
        assert all(len(b) == 1 or sum(lengths[i] for i in b) <= 64 for b in bins)
    assert pack_rows([0, 1], [100, 3], 64) == [[0], [1]]  # longer than the capacity: alone


def test_packed_batch_restarts_positions_and_ignores_each_rows_first_label():
    b = packed_batch([[5, 6, 7], [8, 9], [4]], [[5, 6, 7], [IGNORE, 9], [4]], [[0, 1], [2]], pad_id=0, ignore=IGNORE)
    assert "attention_mask" not in b
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9], [IGNORE] + [IGNORE] * 4]


def _chat_rows(n: int, seed: int) -> ChatEncoded:
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        prompt = [rng.randint(5, 900) for _ in range(rng.randint(3, 20))]
        answer = [rng.randint(5, 900) for _ in range(rng.randint(1, 12))]
        ids.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    return ChatEncoded(ids, labels, ["x"] * n, [[]] * n, [""] * n)


def test_packed_and_padded_rows_give_the_same_loss_and_gradients(tiny_llama):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).train()
    model.config.attention_dropout = 0.0
    task = get_task("generate")
    assert task.packs(model)
    data = _chat_rows(9, 1)
    rows = list(range(9))
    results = []
    for batch in (collate_chat(data, rows, 0), task.collate_packed(data, pack_rows(rows, data.lengths, 48), 0)):
        model.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        results.append((float(loss), task.loss_items(batch),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (padded, items_a, grads_a), (packed, items_b, grads_b) = results
    assert items_a == items_b
    assert packed == pytest.approx(padded, abs=1e-5)
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-5), n


def _recipe(tmp_path, tiny_llama, packing: bool, **train):
    write_jsonl(tmp_path / "train.jsonl", say_chats(24))
    return write_recipe(
        tmp_path / f"{packing}.yaml", task="generate", model=str(tiny_llama), method="lora",
        data={"train": "train.jsonl", "test": "train.jsonl"},
        train={"lr": 1e-3, "batch_size": 8, "max_length": 64, "log_every": 1, "dropout": 0.0, "precision": "fp32",
               "group_by_length": False, **train}, lora={"dropout": 0.0},
        memory={"packing": packing, "micro_batch_tokens": None}, eval={"max_samples": 2},
        generate={"max_new_tokens": 2}, output=str(tmp_path / f"packing-{packing}"))


def test_a_packed_run_trains_as_the_padded_one(tmp_path, tiny_llama):
    runs = {packing: tuneline.train(_recipe(tmp_path, tiny_llama, packing, max_steps=3)).path
            for packing in (False, True)}
    padded, packed = (json.loads((runs[k] / "run.json").read_text()) for k in (False, True))
    assert packed["trained_tokens"] == padded["trained_tokens"]
    assert packed["computed_tokens"] < padded["computed_tokens"]  # the padding is gone
    losses = [[json.loads(l)["loss"] for l in (runs[k] / "metrics.jsonl").read_text().splitlines()
               if json.loads(l)["type"] == "train"] for k in (False, True)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_the_dry_run_plans_the_packed_layout(tmp_path, tiny_llama):
    recipe = _recipe(tmp_path, tiny_llama, True, epochs=1)
    plan = tuneline.train(recipe, dry_run=True)
    assert plan["packed"]
    manifest = json.loads((tuneline.train(recipe).path / "run.json").read_text())
    assert abs(manifest["computed_tokens"] - plan["padded_tokens_per_epoch"]) <= 0.15 * manifest["computed_tokens"]


def test_packing_auto_is_for_gpus_and_true_is_refused_where_rows_cannot_pack(tmp_path, tiny_llama):
    r = recipe_from_dict({"task": "classify", "model": "x", "data": {"train": "t.jsonl"}})
    assert (r.memory.packs("cpu"), r.memory.packs("cuda")) == (False, True)
    with pytest.raises(UserError, match="memory.packing") as e:
        recipe_from_dict({"task": "classify", "model": "x", "data": {"train": "t.jsonl"}, "memory": {"packing": "maybe"}})
    assert "use auto, true or false" in str(e.value)
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"}
                                           for i in range(12)])
    recipe = write_recipe(tmp_path / "dpo.yaml", task="generate", objective="dpo", model=str(tiny_llama),
                          method="lora", data={"train": "pairs.jsonl", "test": "pairs.jsonl", "format": "pairs"},
                          train={"max_steps": 1, "batch_size": 4, "max_length": 32}, memory={"packing": True},
                          output=str(tmp_path / "dpo"))
    with pytest.raises(UserError, match="memory.packing: true: objective dpo cannot pack rows"):
        tuneline.train(recipe)
