"""train.compile: compiled blocks train as the plain ones; evaluation runs them eager.

Tracing and the autograd split are what tuneline adds around torch.compile; the tests run the
aot_eager backend (the same graphs, no code generation), so they take seconds on a CPU."""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.utils import counters

import tuneline
from tuneline.errors import UserError
from tuneline.training import compiling

from conftest import say_chats, write_jsonl, write_recipe


@pytest.fixture(autouse=True)
def _aot_eager(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_blocks_switch_to_eager_keep_their_names_and_are_refused_under_fsdp(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    names = list(model.state_dict())
    compiled = compiling.compile_blocks(model, enabled=True, sharded=False)  # traced at the first call
    assert len(compiled) == 2 and all(b._compiled_call_impl is not None for b in compiled.blocks)
    with compiled.eager():
        assert all(b._compiled_call_impl is None for b in compiled.blocks)
    assert all(b._compiled_call_impl is not None for b in compiled.blocks)
    assert list(model.state_dict()) == names  # checkpoints and the merge see the same keys
    assert compiling.compile_blocks(model, enabled=False, sharded=False) is None
    with pytest.raises(UserError, match="train.compile"):
        compiling.compile_blocks(model, enabled=True, sharded=True)


def _recipe(tmp_path, tiny_llama, compile_: bool):
    write_jsonl(tmp_path / "train.jsonl", say_chats(16, step=5, mod=17, answers=4))
    return write_recipe(
        tmp_path / f"{compile_}.yaml", task="generate", model=str(tiny_llama), method="lora",
        data={"train": "train.jsonl", "test": "train.jsonl"},
        train={"max_steps": 3, "lr": 1e-3, "batch_size": 8, "max_length": 48, "log_every": 1, "dropout": 0.0,
               "precision": "fp32", "compile": compile_}, lora={"dropout": 0.0},
        eval={"max_samples": 2}, generate={"max_new_tokens": 2}, output=str(tmp_path / f"run-{compile_}"))


def test_a_compiled_run_trains_as_the_plain_one(tmp_path, tiny_llama):
    runs = {c: tuneline.train(_recipe(tmp_path, tiny_llama, c)).path for c in (False, True)}
    losses = [[json.loads(line)["loss"] for line in (runs[c] / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["type"] == "train"] for c in (False, True)]
    # the same losses step by step (the same weights after each update) and the same evaluation
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]  # it did run compiled, whole
    evals = [json.loads((runs[c] / "eval.json").read_text())["tuned"]["loss"] for c in (False, True)]
    assert evals[1] == pytest.approx(evals[0], rel=1e-4)
