"""What replay buys against forgetting: the intent task trained without and with
train.replay (general instructions, Dolly), then three figures for the base model and both runs:

- the task's exact match on its test rows (from eval.json),
- perplexity on general text never trained on (WikiText-2 test, first 24 blocks of 256 tokens),
- loss on answers to held-out general instructions (Dolly test, first 100 rows).

    .venv/bin/python benchmarks/replay_forgetting.py [--fraction 0.2] [--out runs/bench-replay]

The perplexity is computed here until the evaluation's own forgetting figure lands.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import tuneline
from tuneline.data.io import read_rows
from tuneline.data.replay import read_paragraphs, text_blocks
from tuneline.models import load_tokenizer, resolve_model
from tuneline.recipe import recipe_from_dict
from tuneline.tasks.generate import GenerateTask

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
RECIPE = HERE / "replay_intent_smollm2.yaml"


@torch.no_grad()
def text_perplexity(model, tokenizer, path: Path, blocks: int = 24, length: int = 256) -> float:
    chunks = [b for b in text_blocks(read_paragraphs(path), tokenizer, length) if len(b) == length][:blocks]
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(chunks), 4):
        ids = torch.tensor(chunks[i:i + 4])
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    return math.exp(total / count)


def instruction_loss(model, tokenizer, path: Path, rows: int = 100, max_length: int = 256) -> float:
    recipe = recipe_from_dict({"task": "generate", "model": "x", "data": {"train": str(path)},
                               "train": {"max_length": max_length}})
    task = GenerateTask()
    data = task.encode_rows(read_rows(path).subset(list(range(rows))), recipe, tokenizer)
    return task.token_loss(model, data, tokenizer.pad_token_id, 8, "cpu")


def forgetting(model, tokenizer) -> dict:
    return {"wikitext_ppl": round(text_perplexity(model, tokenizer, SHARED / "reference" / "general.txt"), 3),
            "dolly_answer_loss": round(instruction_loss(model, tokenizer, SHARED / "instructions" / "test.jsonl"), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--out", default="runs/bench-replay")
    args = ap.parse_args()
    out = Path(args.out)
    results = {}
    source = resolve_model("smollm2-135m-instruct")
    tok = load_tokenizer(source.path)
    base = GenerateTask().load_model(source.path, recipe_from_dict(
        {"task": "generate", "model": "x", "data": {"train": "x"}}), tok)
    results["base model"] = {**forgetting(base, tok), "exact_match": None}
    del base
    replay = f"train.replay={{data: {SHARED / 'instructions' / 'train.jsonl'}, fraction: {args.fraction}}}"
    for name, overrides in (("tuned, no replay", []), (f"tuned, replay {args.fraction:g}", [replay])):
        t0 = time.time()
        result = tuneline.train(RECIPE, overrides=overrides, output=out / name.replace(" ", "_").replace(",", ""),
                                overwrite=True)
        wall = time.time() - t0
        run = tuneline.load_run(result.path)
        results[name] = {**forgetting(run.model, run.tokenizer), "exact_match": result.eval["tuned"]["exact_match"],
                         "wall_s": round(wall, 1)}
        if "base model" in results and results["base model"]["exact_match"] is None:
            results["base model"]["exact_match"] = result.eval["baseline"]["exact_match"]
    print(json.dumps(results, indent=2))
    print("\n| model | intent exact match | WikiText perplexity | Dolly answer loss | wall |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['exact_match']:.3f} | {r['wikitext_ppl']:.2f} | {r['dolly_answer_loss']:.3f} | "
              f"{r.get('wall_s', '-')} |")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
