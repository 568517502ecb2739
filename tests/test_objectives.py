"""Preference and reward objectives: each loss against hand-computed values on a fixed batch,
log-probs against the model's own logits, and whole runs on a tiny random Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_jsonl, write_recipe

import tuneline
from tuneline.errors import UserError
from tuneline.tasks.grpo import answer_mask, group_advantages, policy_loss
from tuneline.tasks.kto import kto_loss
from tuneline.tasks.preference import dpo_loss, orpo_loss, simpo_loss

T = torch.tensor


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- the losses, by hand ----------------------------------------------------------------
def test_dpo_losses_by_hand():
    pc, pr, rc, rr = T([-3.0]), T([-5.0]), T([-4.0]), T([-4.5])
    h = (-3 + 4) - (-5 + 4.5)  # 1.5
    assert dpo_loss(pc, pr, rc, rr, 0.1).item() == pytest.approx(-math.log(sig(0.15)), rel=1e-6)
    smoothed = -(0.9 * math.log(sig(0.15))) - 0.1 * math.log(sig(-0.15))
    assert dpo_loss(pc, pr, rc, rr, 0.1, label_smoothing=0.1).item() == pytest.approx(smoothed, rel=1e-6)
    assert dpo_loss(pc, pr, rc, rr, 0.5, "hinge").item() == pytest.approx(max(0, 1 - 0.5 * h))
    nc, nr = T([2.0]), T([4.0])
    h_ipo = (-3 / 2 + 4 / 2) - (-5 / 4 + 4.5 / 4)  # 0.625
    assert dpo_loss(pc, pr, rc, rr, 0.1, "ipo", nc=nc, nr=nr).item() == pytest.approx((h_ipo - 5) ** 2, rel=1e-6)
    # RPO: plus the chosen answer's mean NLL
    assert dpo_loss(pc, pr, rc, rr, 0.1, nc=nc, nr=nr, sft_weight=0.5).item() == pytest.approx(
        -math.log(sig(0.15)) + 0.5 * 3 / 2, rel=1e-6)
    # at the reference the sigmoid loss is log 2, whatever beta
    assert dpo_loss(rc, rr, rc, rr, 3.0).item() == pytest.approx(math.log(2))


def test_simpo_and_orpo_by_hand():
    pc, pr, nc, nr = T([-2.0]), T([-6.0]), T([2.0]), T([3.0])
    # SimPO: -log σ(β(pc/nc - pr/nr) - γ) = -log σ(2·(-1 + 2) - 1)
    assert simpo_loss(pc, pr, nc, nr, beta=2.0, gamma=1.0).item() == pytest.approx(-math.log(sig(1.0)), rel=1e-6)
    assert simpo_loss(pc, pr, nc, nr, 2.0, 1.0, sft_weight=0.5).item() == pytest.approx(
        -math.log(sig(1.0)) + 0.5, rel=1e-6)
    # ORPO: mean NLL 1.0; odds: log(p/(1-p)) with p = e^-1 and e^-2
    a, b = math.exp(-1), math.exp(-2)
    log_odds = math.log(a / (1 - a)) - math.log(b / (1 - b))
    assert orpo_loss(pc, pr, nc, nr, beta=0.1).item() == pytest.approx(1.0 - 0.1 * math.log(sig(log_odds)), rel=1e-6)


def test_kto_by_hand():
    logratio, kl = T([0.5, -0.2]), T([0.3, 0.1])  # z = mean(kl) = 0.2
    out = kto_loss(logratio, kl, T([True, False]), beta=0.1, desirable_weight=1.0, undesirable_weight=2.0)
    assert out[0].item() == pytest.approx(1 - sig(0.1 * (0.5 - 0.2)), rel=1e-6)
    assert out[1].item() == pytest.approx(2 * (1 - sig(0.1 * (0.2 + 0.2))), rel=1e-6)
    # a negative KL estimate is clamped at 0
    assert kto_loss(T([0.5]), T([-1.0]), T([True]), 0.1).item() == pytest.approx(1 - sig(0.05), rel=1e-6)


def test_grpo_advantages_loss_and_mask():
    rewards = T([1.0, 0.0, 0.0, 0.5, 0.5, 0.5])  # two prompts, groups of 3
    adv = group_advantages(rewards, 3, scale=False)
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    scaled = group_advantages(rewards, 3)
    assert scaled[0].item() == pytest.approx((2 / 3) / (T([1.0, 0, 0]).std().item() + 1e-4))
    assert scaled[3:].abs().max().item() == 0  # equal rewards teach nothing
    # at the sampled weights the ratio is 1: the loss is -A per token, nothing is clipped
    lp = T([-1.0, -2.0], requires_grad=True)
    losses, clipped, kl = policy_loss(lp, lp.detach(), T([0.5, -1.0]), 0.2)
    assert losses.tolist() == pytest.approx([-0.5, 1.0]) and not clipped.any() and kl is None
    losses.sum().backward()
    assert lp.grad.tolist() == pytest.approx([-0.5, 1.0])  # raises the advantaged token's log-prob
    # ratio e^0.5 > 1.2 with a positive advantage: clipped, no gradient through it
    lp2 = T([-0.5], requires_grad=True)
    losses, clipped, _ = policy_loss(lp2, T([-1.0]), T([1.0]), 0.2)
    assert losses.item() == pytest.approx(-1.2) and clipped.all()
    # k3 KL: exp(d) - d - 1 with d = ref - logp
    losses, _, kl = policy_loss(T([-1.0]), T([-1.0]), T([0.0]), 0.2, ref_logps=T([-1.5]), beta=0.1)
    assert kl.item() == pytest.approx(math.exp(-0.5) + 0.5 - 1) and losses.item() == pytest.approx(0.1 * kl.item())
    mask = answer_mask(T([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5]]), [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_sequence_logps_match_the_models_logits(tiny_llama):
    from transformers import AutoModelForCausalLM

    from tuneline.data.chat import IGNORE
    from tuneline.tasks.logprobs import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    ids = T([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    labels = T([[IGNORE, IGNORE, 7, 8, 9], [IGNORE, 11, 12, IGNORE, IGNORE]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.float(), -1)
    want0 = sum(logp[0, t - 1, ids[0, t]].item() for t in (2, 3, 4))
    want1 = sum(logp[1, t - 1, ids[1, t]].item() for t in (1, 2))
    assert sums.tolist() == pytest.approx([want0, want1], abs=1e-4)
    assert counts.tolist() == [3, 2]


# -- whole runs ------------------------------------------------------------------------------
COLOURS = [("apple", "red"), ("banana", "yellow"), ("grass", "green"), ("sky", "blue"), ("coal", "black"),
           ("snow", "white"), ("plum", "purple"), ("lemon", "yellow"), ("rose", "red"), ("cream", "white")]


def pair_rows(n: int) -> list[dict]:
    """The right colour is chosen, another rejected: a preference a tiny model can learn."""
    rows = []
    for i in range(n):
        w, c = COLOURS[i % len(COLOURS)]
        wrong = COLOURS[(i + 3) % len(COLOURS)][1]
        rows.append({"prompt": f"what colour is {w}", "chosen": f"{w} is {c}", "rejected": f"{w} is {wrong}"})
    return rows


@pytest.fixture
def pref_recipe(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "train.jsonl", pair_rows(40))
    write_jsonl(tmp_path / "test.jsonl", pair_rows(10))

    def make(objective="dpo", method="lora", name=None, **sections):
        t = {"epochs": 6, "lr": 2e-2 if method != "full" else 2e-3, "batch_size": 4, "max_length": 48, "log_every": 2,
             "precision": "fp32"}  # bf16 on a CPU with AMX: these tiny runs are chaotic at lr 2e-2
        t.update(sections.pop("train", {}))
        name = name or f"{objective}-{method}"
        return write_recipe(tmp_path / f"{name}.yaml", task="generate", model=str(tiny_llama),
                            method=method, objective=objective, data={"train": "train.jsonl", "test": "test.jsonl"},
                            train=t, generate={"max_new_tokens": 6}, output=str(tmp_path / f"run-{name}"), **sections)

    return make


@pytest.mark.parametrize("objective,method,extra", [
    # beta 0.1: the adapter's margins stay within noise (loss ~0.69). lr 2e-2 over 6 epochs swung with
    # rounding (seeds 42, 1-5: 0.5-0.9 accuracy); 1e-2 over 10 reached 1.0 on 5 of 6, margin 0.75 at 42
    ("dpo", "lora", {"dpo": {"beta": 0.5}, "train": {"lr": 1e-2, "epochs": 10}}),
    ("dpo", "full", {"dpo": {"precompute_reference": False}}),  # the frozen copy
    ("simpo", "full", {}),
    ("orpo", "full", {"orpo": {"beta": 2.0}, "train": {"lr": 6e-3}}),  # a random model: NLL dominates at 0.1
])
def test_pair_objectives_raise_preference_accuracy(objective, method, extra, pref_recipe):
    result = tuneline.train(pref_recipe(objective, method, **extra))
    ev = result.eval
    assert ev["objective"] == objective and ev["verdict_metrics"] == ["preference_accuracy"]
    tuned, base = ev["tuned"], ev["baseline"]
    assert {"preference_accuracy", "logp_margin", "chrf", "perplexity"} <= set(tuned) & set(base)
    assert tuned["logp_margin"] > base["logp_margin"] + 0.2
    assert tuned["preference_accuracy"] >= 0.8 and tuned["preference_accuracy"] > base["preference_accuracy"]
    evals = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["type"] == "eval" and "preference_accuracy" in r for r in evals)
    preds = [json.loads(line) for line in (result.path / "predictions.jsonl").read_text().splitlines()]
    assert {"rejected", "tuned_margin", "baseline_margin"} <= set(preds[0])
    # the run is a chat model like any other: load_run answers, evaluate re-scores the pairs
    run = tuneline.load_run(result.path)
    assert isinstance(run.generate([{"role": "user", "content": "what colour is snow"}]), str)
    again = tuneline.evaluate(result.path)
    assert again["tuned"]["preference_accuracy"] == tuned["preference_accuracy"]


def test_dpo_reference_precomputed_equals_on_the_fly(pref_recipe):
    """The same run with the reference precomputed once or through the switched-off adapter each step."""
    a = tuneline.train(pref_recipe("dpo", train={"epochs": 1, "seed": 3}))
    b = tuneline.train(pref_recipe("dpo", name="on-the-fly", train={"epochs": 1, "seed": 3},
                                   dpo={"precompute_reference": False}))
    la = [json.loads(x)["loss"] for x in (a.path / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    lb = [json.loads(x)["loss"] for x in (b.path / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    print("LOSSES", la, lb)
    # the first losses already differ by ~1.5e-5 (the reference's log-probs come from batches of
    # another layout, so other float roundings); five steps of training carry that to ~1e-4
    assert la == pytest.approx(lb, abs=3e-4)


def test_kto_learns_from_judged_answers(tmp_path, tiny_llama):
    rows = []
    for i in range(40):
        w, c = COLOURS[i % len(COLOURS)]
        good = i % 2 == 0
        rows.append({"prompt": f"what colour is {w}", "completion": f"{w} is {c}" if good else "i do not know that",
                     "label": good})
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:10])
    recipe = write_recipe(tmp_path / "kto.yaml", task="generate", model=str(tiny_llama), method="lora",
                          objective="kto", data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 3, "lr": 1e-2, "batch_size": 4, "max_length": 48},
                          generate={"max_new_tokens": 6}, output=str(tmp_path / "run-kto"))
    ev = tuneline.train(recipe).eval
    assert ev["objective"] == "kto" and ev["verdict_metrics"] == ["logp_margin"]
    assert ev["tuned"]["logp_margin"] > ev["baseline"]["logp_margin"] + 0.5
    assert ev["tuned"]["loss"] < ev["baseline"]["loss"]


def test_kto_refuses_one_sided_data(tmp_path, tiny_llama):
    rows = [{"prompt": f"q{i}", "completion": "a", "label": True} for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = write_recipe(tmp_path / "kto.yaml", task="generate", model=str(tiny_llama), method="lora",
                          objective="kto", data={"train": "train.jsonl"}, output=str(tmp_path / "r"))
    with pytest.raises(UserError, match="kto needs both"):
        tuneline.train(recipe, force=True)


def test_grpo_raises_the_grader_score(tmp_path, tiny_llama):
    """The grader pays for answers with a digit in them: a random model samples one in about 1 of
    5 three-token answers (7 % of its vocabulary has digits) and learns to give more."""
    rows = [{"messages": [{"role": "user", "content": f"question number {i}"}], "answer": "yes"} for i in range(24)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:8])
    grader = {"type": "regex", "name": "digit", "pattern": "[0-9]"}
    recipe = write_recipe(tmp_path / "grpo.yaml", task="generate", model=str(tiny_llama), method="full",
                          objective="grpo", data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 6, "lr": 3e-2, "batch_size": 4, "max_length": 48, "log_every": 1},
                          grpo={"num_generations": 8, "max_new_tokens": 3, "temperature": 1.0},
                          generate={"max_new_tokens": 3}, rewards=[grader], output=str(tmp_path / "run-grpo"))
    result = tuneline.train(recipe)
    logs = [json.loads(x) for x in (result.path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["type"] == "train"]
    assert {"reward", "reward_std", "pass_rate", "answer_tokens", "clipped"} <= set(train[0])
    early = sum(r["reward"] for r in train[:12]) / 12
    late = sum(r["reward"] for r in train[-12:]) / 12
    assert late > early + 0.05
    ev = result.eval
    assert ev["objective"] == "grpo" and {"reward", "pass_rate", "answer_words"} <= set(ev["tuned"])
    assert ev["tuned"]["reward"] >= ev["baseline"]["reward"] + 0.5  # greedy answers now have a digit


def test_objective_recipe_errors(tmp_path, tiny_llama):
    from tuneline.recipe import recipe_from_dict

    base = {"task": "generate", "model": "x", "data": {"train": "a"}}
    with pytest.raises(UserError, match="grpo learns from graders"):
        recipe_from_dict({**base, "objective": "grpo"})
    with pytest.raises(UserError, match="trains task 'generate', not 'classify'"):
        recipe_from_dict({**base, "task": "classify", "objective": "dpo"})
    with pytest.raises(UserError, match="allowed: sft, dpo"):
        recipe_from_dict({**base, "objective": "ppo"})
    r = recipe_from_dict({**base, "objective": "dpo", "dpo": {"beta": 0.2}})
    assert r.dpo.beta == 0.2 and r.simpo.beta == 2.0 and r.grpo.beta == 0.0


@pytest.mark.parametrize("objective", ["grpo"])  # dpo's reference pass is an evaluation pass, as under sft
def test_objectives_train_sharded_over_two_processes(objective, tmp_path, tiny_llama):
    """--nproc 2 with FSDP: GRPO's sampling keeps the ranks' forwards paired."""
    import subprocess
    import sys

    if objective == "dpo":
        write_jsonl(tmp_path / "train.jsonl", pair_rows(16))
        extra = {}
    else:
        write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": f"q {i}"}]} for i in range(16)])
        extra = {"rewards": [{"type": "regex", "pattern": "[0-9]"}], "grpo": {"num_generations": 4, "max_new_tokens": 3}}
    recipe = write_recipe(tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="full", objective=objective,
                          data={"train": "train.jsonl"}, generate={"max_new_tokens": 3},
                          train={"epochs": 1, "lr": 1e-3, "batch_size": 4, "max_length": 48, "sharding": "fsdp",
                                 "precision": "fp32"}, eval={"forgetting": {"enabled": False}}, **extra)
    r = subprocess.run([sys.executable, "-m", "tuneline", "train", str(recipe), "-o", str(tmp_path / "run"),
                        "--nproc", "2", "--force"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "FSDP: 2 block units + root" in r.stdout
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["objective"] == objective


def test_dpo_resumed_run_matches_an_uninterrupted_one(pref_recipe):
    """The reference is computed again before the checkpoint loads: a resumed run continues exactly."""
    from tuneline.errors import RunStopped
    from tuneline.training.loop import Callback

    class StopAt(Callback):
        def on_log(self, trainer, record):
            if record["step"] == 4:
                raise RunStopped("stopped", "test stop at step 4")

    settings = {"train": {"epochs": 1, "seed": 5, "log_every": 1, "save_every": 2, "precision": "fp32"}}
    whole = tuneline.train(pref_recipe("dpo", name="whole", **settings))
    recipe = pref_recipe("dpo", name="cut", **settings)
    with pytest.raises(RunStopped):
        tuneline.train(recipe, callbacks=[StopAt()])
    resumed = tuneline.train(recipe, resume=True)

    def losses(run):
        return [json.loads(x)["loss"] for x in (run.path / "metrics.jsonl").read_text().splitlines() if '"train"' in x]

    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-5)
    assert resumed.eval["tuned"]["preference_accuracy"] == pytest.approx(whole.eval["tuned"]["preference_accuracy"])


@pytest.mark.parametrize("objective", ["dpo", "grpo"])
def test_dry_run_probes_an_objective(objective, tmp_path, tiny_llama):
    if objective == "dpo":
        write_jsonl(tmp_path / "train.jsonl", pair_rows(40))
        extra = {}
    else:
        write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": f"q {i}"}]} for i in range(20)])
        extra = {"rewards": [{"type": "regex", "pattern": "[0-9]"}], "grpo": {"num_generations": 4, "max_new_tokens": 3}}
    recipe = write_recipe(tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="lora", objective=objective,
                          data={"train": "train.jsonl"}, train={"max_length": 48, "batch_size": 4}, **extra)
    plan = tuneline.train(recipe, dry_run=True, output=tmp_path / "never")
    assert plan["steps"] > 0 and plan["estimated_train_seconds"] > 0
    assert not (tmp_path / "never").exists()


def test_the_dpo_example_recipe_and_its_pairs_load():
    from pathlib import Path

    from tuneline.data.io import read_rows
    from tuneline.data.preference import detect_preference_format, to_pair
    from tuneline.recipe import load_recipe

    folder = Path(__file__).resolve().parents[1] / "examples" / "support"
    recipe, _ = load_recipe(folder / "dpo.yaml")
    assert recipe.objective == "dpo" and recipe.dpo.sft_weight == 0.2
    rows = read_rows(folder / "pairs.jsonl")
    assert detect_preference_format(rows, "pairs") == "pairs"
    assert all(to_pair(r, rows.where(i), "pairs").chosen for i, r in enumerate(rows.records))


def test_grpo_with_a_kl_penalty_logs_it(tmp_path, tiny_llama):
    """grpo.beta > 0 under LoRA: the reference is the base with the adapter off; the KL is logged."""
    rows = [{"messages": [{"role": "user", "content": f"question number {i}"}]} for i in range(12)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = write_recipe(tmp_path / "g.yaml", task="generate", model=str(tiny_llama), method="lora", objective="grpo",
                          data={"train": "train.jsonl"}, generate={"max_new_tokens": 3},
                          train={"max_steps": 3, "lr": 1e-2, "batch_size": 4, "max_length": 48, "log_every": 1},
                          grpo={"num_generations": 4, "max_new_tokens": 3, "beta": 0.04},
                          rewards=[{"type": "regex", "pattern": "[0-9]"}], eval={"forgetting": {"enabled": False}},
                          output=str(tmp_path / "run"))
    result = tuneline.train(recipe)
    logs = [json.loads(x) for x in (result.path / "metrics.jsonl").read_text().splitlines()]
    kls = [r["kl"] for r in logs if r["type"] == "train"]
    assert len(kls) == 3 and kls[0] == pytest.approx(0, abs=1e-6) and all(k >= 0 for k in kls)
