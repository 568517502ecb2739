"""memory.micro_batch_tokens: a batch cut into pieces under a token budget gives the same update
as the whole batch; and the fast CPU dropout that training swaps in."""

import json

import pytest
import torch

import tuneline
from tuneline.data.batching import padding_groups, split_by_tokens
from tuneline.errors import UserError
from tuneline.training.fast_dropout import FastDropout, use_fast_dropout
from tuneline.recipe import recipe_from_dict

from conftest import synthetic_rows, write_jsonl, write_recipe


def test_split_respects_budget_and_keeps_every_row():
    lengths = [5, 40, 12, 12, 300, 7, 39, 1]
    rows = list(range(len(lengths)))
    pieces = split_by_tokens(rows, lengths, budget=80)
    assert sorted(i for p in pieces for i in p) == rows
    for p in pieces:
        width = max(lengths[i] for i in p)
        assert len(p) == 1 or len(p) * width <= 80
    assert [4] in pieces  # longer than the budget: alone
    assert split_by_tokens(rows, lengths, None) == [rows]
    assert split_by_tokens(rows, lengths, 10_000) == [sorted(rows, key=lambda i: -lengths[i])]


def _padded_cost(groups, lengths, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def test_padding_groups_are_the_cheapest_cut_of_the_sorted_rows():
    import itertools
    import random

    rng = random.Random(0)
    for trial in range(40):
        n = rng.randint(1, 9)
        lengths = [rng.randint(1, 60) for _ in range(n)]
        max_rows, overhead = rng.randint(1, 5), rng.choice([0, 8, 32])
        groups = padding_groups(lengths, max_rows, overhead)
        assert sorted(i for g in groups for i in g) == list(range(n))
        assert all(1 <= len(g) <= max_rows for g in groups)
        # brute force over every cut of the length-sorted rows
        order = sorted(range(n), key=lambda i: -lengths[i])
        best = min(_padded_cost([order[a:b] for a, b in zip((0,) + cuts, cuts + (n,))], lengths, overhead)
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k)
                   if all(b - a <= max_rows for a, b in zip((0,) + cuts, cuts + (n,))))
        assert _padded_cost(groups, lengths, overhead) == best
    assert padding_groups([], 4) == []
    # texts of mixed lengths: splitting beats one pass padded to the longest
    lengths = [55, 50, 48, 30, 25, 24, 22, 20, 12, 10, 8, 6, 5, 5]
    groups = padding_groups(lengths, 64)
    assert len(groups) > 1 and _padded_cost(groups, lengths, 32) < _padded_cost([list(range(14))], lengths, 32)


def _weights(run_dir) -> dict:
    from safetensors.torch import load_file

    files = sorted((run_dir / "model").glob("*.safetensors"))
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _train_losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(l)["loss"] for l in lines if json.loads(l)["type"] == "train"]


@pytest.mark.parametrize("task", ["generate", "classify"])
def test_pieces_give_the_same_update_as_the_whole_batch(task, tmp_path, tiny_llama, tiny_bert):
    """Same rows, same steps: a budget that cuts every batch into several pieces must reach the
    weights and losses of the uncut run (dropout off, so no random draws differ)."""
    if task == "generate":
        rows = [{"messages": [{"role": "user", "content": "say " + " ".join(["word"] * (i % 7 + 1))},
                              {"role": "assistant", "content": " ".join(["ok"] * (i % 5 + 1)) + f" {i}"}]}
                for i in range(24)]
        model, extra = tiny_llama, {"generate": {"max_new_tokens": 2}}
    else:
        rows = synthetic_rows(24, 3)
        model, extra = tiny_bert, {}
    write_jsonl(tmp_path / "train.jsonl", rows)
    runs = {}
    for name, budget in (("whole", None), ("pieces", 24)):
        recipe = write_recipe(
            tmp_path / f"{task}-{name}.yaml", task=task, model=str(model), method="full",
            data={"train": "train.jsonl", "test": "train.jsonl"},
            train={"max_steps": 3, "lr": 1e-3, "batch_size": 8, "max_length": 48, "log_every": 1, "dropout": 0.0,
                   "precision": "fp32"},  # the sums are compared, not the rounding of bf16 (auto on AMX CPUs)
            memory={"micro_batch_tokens": budget}, eval={"max_samples": 2},
            output=str(tmp_path / f"{task}-{name}"), **extra)
        tuneline.train(recipe)
        runs[name] = tmp_path / f"{task}-{name}"
    manifest = json.loads((runs["pieces"] / "run.json").read_text())
    whole_manifest = json.loads((runs["whole"] / "run.json").read_text())
    assert manifest["trained_tokens"] == whole_manifest["trained_tokens"]
    # pieces of alike lengths pad less than the whole batch
    assert manifest["computed_tokens"] < whole_manifest["computed_tokens"]
    assert _train_losses(runs["pieces"]) == pytest.approx(_train_losses(runs["whole"]), rel=1e-4)
    a, b = _weights(runs["whole"]), _weights(runs["pieces"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5), k


@pytest.mark.parametrize("value", [0, 4, "big", True, 1.5])
def test_bad_budget_is_one_clear_error(value):
    with pytest.raises(UserError, match="micro_batch_tokens") as e:
        recipe_from_dict({"task": "classify", "model": "x", "data": {"train": "t.jsonl"},
                          "memory": {"micro_batch_tokens": value}})
    assert "token budget" in str(e.value)


def test_budget_auto_is_cpu_only():
    r = recipe_from_dict({"task": "classify", "model": "x", "data": {"train": "t.jsonl"}})
    assert r.memory.token_budget("cpu") == 1024
    assert r.memory.token_budget("cuda") is None


# -- fast dropout -----------------------------------------------------------------------------------
def test_fast_dropout_rate_scale_and_gradient():
    torch.manual_seed(0)
    d = FastDropout(0.1).train()
    x = torch.ones(600, 500, requires_grad=True)
    y = d(x)
    kept = (y != 0).float()
    assert kept.mean().item() == pytest.approx(0.9, abs=0.003)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, kept / 0.9)  # the gradient flows through the kept elements only
    odd = torch.randn(3, 5, 7)  # a size not a multiple of the four lanes per draw
    assert d(odd).shape == odd.shape


def test_fast_dropout_follows_the_torch_seed_and_is_identity_in_eval():
    d = FastDropout(0.3).train()
    x = torch.randn(64, 64)
    torch.manual_seed(5)
    a = d(x)
    torch.manual_seed(5)
    assert torch.equal(a, d(x))
    assert not torch.equal(a, d(x))
    d.eval()
    assert torch.equal(d(x), x)


def test_swap_replaces_active_dropouts_only():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.2),
                            torch.nn.ModuleDict({"a": torch.nn.Dropout(0.1), "b": torch.nn.Dropout(0.0)}))
    before = m.state_dict().keys()
    assert use_fast_dropout(m) == 2
    assert isinstance(m[1], FastDropout) and m[1].p == 0.2
    assert isinstance(m[2]["a"], FastDropout) and type(m[2]["b"]) is torch.nn.Dropout
    assert m.state_dict().keys() == before
