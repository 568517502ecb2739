"""The objectives end to end with the real SmolLM2 (minutes). Marked slow; `make test` runs them.
A file of their own: the two test processes each take one slow file first (conftest.py)."""

import json
from pathlib import Path

import pytest

import tuneline

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


SST2 = ROOT.parent / "shared" / "data" / "sst2"
QUESTION = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {}"


def _sst2(n: int, split: str = "validation") -> list[dict]:
    return [json.loads(line) for line in (SST2 / f"{split}.jsonl").read_text().splitlines()[:n]]


def test_smollm2_dpo_on_sst2_pairs_beats_the_base(tmp_path):
    """DPO + LoRA on real reviews: the chosen answer is the true sentiment word."""
    other = {"positive": "negative", "negative": "positive"}
    rows = [{"prompt": QUESTION.format(r["text"]), "chosen": r["label"], "rejected": other[r["label"]]}
            for r in _sst2(160)]
    from conftest import write_jsonl, write_recipe

    write_jsonl(tmp_path / "train.jsonl", rows[:120])
    write_jsonl(tmp_path / "test.jsonl", rows[120:])
    recipe = write_recipe(tmp_path / "dpo.yaml", task="generate", model="smollm2-135m-instruct", method="lora",
                          objective="dpo", data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 1, "lr": 5e-4, "batch_size": 8, "max_length": 128},
                          lora={"r": 16, "alpha": 32},
                          # a short system prompt instead of SmolLM2's default: a fifth fewer tokens per row
                          generate={"max_new_tokens": 2, "system_prompt": "You judge reviews."},
                          eval={"forgetting": {"max_tokens": 4096}}, output=str(tmp_path / "run"))
    ev = tuneline.train(recipe).eval
    # measured here: 0.900 vs 0.675, margin 2.47 vs 0.32 (40 test pairs: one pair is 0.025). With 80
    # training pairs (and the default system prompt) it was only 0.875 vs 0.800 on rows 80-120
    assert ev["tuned"]["preference_accuracy"] > ev["baseline"]["preference_accuracy"] + 0.1, (ev["tuned"], ev["baseline"])
    assert ev["tuned"]["logp_margin"] > ev["baseline"]["logp_margin"] + 1.0
    assert ev["forgetting"]["measured"]


def test_smollm2_grpo_runs_with_graders(tmp_path):
    """A few GRPO steps on the real chat template: sampling, grading and the reward log work end to end."""
    from conftest import write_jsonl, write_recipe

    rows = [{"messages": [{"role": "user", "content": QUESTION.format(r["text"])}], "label": r["label"]}
            for r in _sst2(24)]
    write_jsonl(tmp_path / "train.jsonl", rows[:16])
    write_jsonl(tmp_path / "test.jsonl", rows[16:])
    grader = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
              "operation": "ilike"}
    recipe = write_recipe(tmp_path / "grpo.yaml", task="generate", model="smollm2-135m-instruct", method="lora",
                          objective="grpo", data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"max_steps": 3, "lr": 5e-4, "batch_size": 2, "max_length": 128, "log_every": 1},
                          grpo={"num_generations": 4, "max_new_tokens": 4}, generate={"max_new_tokens": 4},
                          rewards=[grader], output=str(tmp_path / "run"))
    result = tuneline.train(recipe)
    logs = [json.loads(x) for x in (result.path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["reward"] <= 1 for r in logs if r["type"] == "train")
    assert {"reward", "pass_rate"} <= set(result.eval["tuned"]) and len(result.eval["tuned"]["samples"]) == 5
