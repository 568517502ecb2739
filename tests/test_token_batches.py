"""train.batch_tokens: an epoch cut into batches by tokens, not rows (even work per step)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import tuneline
from tuneline.data.batching import epoch_batches, token_batches
from tuneline.errors import UserError
from tuneline.recipe import recipe_from_dict
from tuneline.training import loop
from tuneline.training.loop import make_plan

from conftest import say_chats, write_jsonl, write_recipe


def test_token_batches_keep_every_row_once_within_the_budget():
    rng = random.Random(0)
    for trial in range(60):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 250))]
        budget = rng.randint(40, 2000)
        for grouped in (False, True):
            batches = token_batches(lengths, budget, trial, grouped)
            assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
            assert all(len(b) == 1 or sum(lengths[i] for i in b) <= budget for b in batches)
            assert batches == token_batches(lengths, budget, trial, grouped)  # a resumed run draws the same
            # greedy: a batch ends only where its next row would not fit (in the order the rows were taken)
            if not grouped:
                order = [i for b in batches for i in b]
                starts = np.cumsum([0] + [len(b) for b in batches])[1:-1]
                assert all(sum(lengths[i] for i in batches[k]) + lengths[order[s]] > budget
                           for k, s in enumerate(starts))
    assert [0] in token_batches([500, 3, 4], 100, 0, False)  # longer than the budget: alone


def test_steps_carry_even_tokens_where_row_batches_do_not():
    rng = np.random.default_rng(1)
    lengths = np.concatenate([rng.integers(8, 40, 300), rng.integers(300, 500, 60)])  # chat-like: a long tail
    by_rows = [sum(lengths[i] for i in b) for b in epoch_batches(lengths, 8, 5, True)]
    by_tokens = [sum(lengths[i] for i in b) for b in token_batches(lengths, 2048, 5, True)]
    spread = lambda x: np.std(x) / np.mean(x)
    assert spread(by_tokens) < spread(by_rows) / 3
    assert sum(by_tokens) == sum(by_rows) == lengths.sum()


def test_the_plan_counts_token_batches_and_commands_without_lengths_say_so():
    tc = recipe_from_dict({"task": "classify", "model": "x", "data": {"train": "t.jsonl"},
                           "train": {"batch_tokens": 100, "grad_accum": 2, "epochs": 2}}).train
    lengths = [30] * 40  # three rows a batch: 14 batches, 7 steps an epoch
    plan = make_plan(len(lengths), tc, lengths)
    assert (plan.micro_batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (14, 7, 14)
    with pytest.raises(UserError, match="train.batch_tokens"):
        make_plan(len(lengths), tc)
    with pytest.raises(Exception, match="batch_tokens"):
        recipe_from_dict({"task": "classify", "model": "x", "data": {"train": "t.jsonl"}, "train": {"batch_tokens": 0}})


def test_a_run_by_tokens_trains_each_row_once_per_epoch_in_steps_under_the_budget(tmp_path, tiny_llama, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", say_chats(30))
    recipe = write_recipe(
        tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="lora",
        data={"train": "train.jsonl", "validation": "train.jsonl", "test": "train.jsonl"},
        train={"epochs": 1, "batch_tokens": 160, "max_length": 64, "log_every": 1, "precision": "fp32"},
        eval={"max_samples": 2}, generate={"max_new_tokens": 2}, output=str(tmp_path / "run"))
    steps = []
    real_step = loop.Trainer._step

    def step(self, group, state):
        steps.append([sum(int(self.train_data.lengths[i]) for i in rows) for rows in group])
        return real_step(self, group, state)

    monkeypatch.setattr(loop.Trainer, "_step", step)
    result = tuneline.train(recipe)
    manifest = json.loads((result.path / "run.json").read_text())
    tokens = [t for s in steps for t in s]
    assert manifest["steps"] == len(steps) and all(len(s) == 1 for s in steps)
    assert all(t <= 160 for t in tokens) and sum(tokens) == manifest["trained_tokens"]
    plan = tuneline.train(recipe, dry_run=True)
    assert plan["steps"] == len(steps) and plan["rows_per_batch"] >= 2
