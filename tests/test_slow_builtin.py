"""End to end with the real built-in models (minutes). Marked slow; `make test` runs them."""

import json
from pathlib import Path

import pytest

import tuneline
from tuneline.inference import load_run

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT / "examples" / "reviews" / "recipe.yaml"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method,overrides", [
    ("full", []),
    ("lora", ["method=lora", "train.lr=1e-3", "lora.r=16", "lora.alpha=32"]),
])
def test_minilm_on_sample_reviews(method, overrides, tmp_path):
    # 4 of the demo's 8 epochs, to keep the suite short: measured accuracy 0.85 (full) and 0.83
    # (lora) against a 0.40 baseline
    result = tuneline.train(REVIEWS, overrides=[*overrides, "train.epochs=4"], output=tmp_path / method)
    ev = result.eval
    assert ev["tuned"]["accuracy"] >= 0.7, ev["tuned"]
    assert ev["tuned"]["accuracy"] > ev["baseline"]["accuracy"] + 0.25
    run = load_run(result.path)
    preds = run.predict(["Absolutely love it, works perfectly and arrived early.",
                         "Broke after two days and support never answered. Returning it."])
    assert [p["label"] for p in preds] == ["positive", "negative"]


def test_smollm2_gguf_loads_and_trains_a_classifier(tmp_path):
    result = tuneline.train(REVIEWS, output=tmp_path / "smol", overrides=[
        "model=smollm2-135m-instruct", "method=lora", "train.max_steps=6", "train.batch_size=4",
        "train.max_length=48", "train.lr=5e-4", "data.max_rows=60", "eval.batch_size=16",
    ])
    info = json.loads((result.path / "tuneline.json").read_text())
    assert info["merged"] and info["labels"] == ["negative", "neutral", "positive"]
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(result.path / "model")).model_type == "llama"


SUPPORT = ROOT / "examples" / "support" / "recipe.yaml"


def test_smollm2_lora_support_chats(tmp_path):
    result = tuneline.train(SUPPORT, output=tmp_path / "support", overrides=[
        "train.max_steps=8", "train.eval_every=4", "data.max_rows=120", "eval.max_samples=4",
        "generate.max_new_tokens=24", "train.max_length=256", "eval.forgetting.max_tokens=4096",
    ])
    ev = result.eval
    keys = {"loss", "perplexity", "exact_match", "bleu", "chrf", "rougeL", "samples"}
    assert keys <= set(ev["tuned"]) and keys <= set(ev["baseline"])
    # eight LoRA steps on consistent shop policy already lower the answer loss
    assert ev["tuned"]["loss"] < ev["baseline"]["loss"]
    run = load_run(result.path)
    answer = run.generate([{"role": "user", "content": "How long do refunds take?"}], max_new_tokens=24)
    assert isinstance(answer, str) and answer


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
