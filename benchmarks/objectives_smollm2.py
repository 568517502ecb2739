"""Preference and reward objectives on the built-in SmolLM2-135M-Instruct, real data, 2 cores.

Data made here from ../shared (never copied into the project; written under --work):
  SST-2 reviews asked as a question ("positive or negative? Answer with one word."):
  - pairs (dpo / simpo / orpo): chosen = the true label, rejected = the other one;
  - judgements (kto): a label word as the answer, desirable when it is the true one;
  - prompts (grpo): the review with its label as the graders' `item.label`; the graders pay for
    an answer that is exactly the right word (multi: right word x one word).
  Bitext support chats as pairs (dpo): chosen = the agent's answer, rejected = the answer to
  another intent's request (relevant vs off-topic answers of the same style).

Each run is `tuneline train` on a recipe written here; the table shows the test figures of the
tuned model against the untuned base and the wall time.

    .venv/bin/python benchmarks/objectives_smollm2.py                 # all
    .venv/bin/python benchmarks/objectives_smollm2.py --only grpo dpo
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
QUESTION = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {text}"
OTHER = {"positive": "negative", "negative": "positive"}


def read(path: Path, n: int | None = None, seed: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    random.Random(seed).shuffle(rows)
    return rows[:n] if n else rows


def write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sst2_data(work: Path, n_train: int, n_test: int) -> dict[str, dict[str, str]]:
    # SST-2's train split is mostly phrases, its validation split whole sentences: train on the sentences
    train = [r for r in read(SHARED / "sst2" / "train.jsonl", None, 1) if len(r["text"].split()) >= 12][:n_train]
    test = read(SHARED / "sst2" / "validation.jsonl", n_test, 2)
    rng = random.Random(3)

    def pairs(rows):
        return [{"prompt": QUESTION.format(text=r["text"]), "chosen": r["label"], "rejected": OTHER[r["label"]]}
                for r in rows]

    def judged(rows):
        out = []
        for r in rows:
            answer = r["label"] if rng.random() < 0.5 else OTHER[r["label"]]
            out.append({"prompt": QUESTION.format(text=r["text"]), "completion": answer, "label": answer == r["label"]})
        return out

    def prompts(rows):
        return [{"messages": [{"role": "user", "content": QUESTION.format(text=r["text"])}], "label": r["label"]}
                for r in rows]

    return {name: {"train": write(work / name / "train.jsonl", fn(train)), "test": write(work / name / "test.jsonl", fn(test))}
            for name, fn in (("sst2-pairs", pairs), ("sst2-judged", judged), ("sst2-prompts", prompts))}


def support_pairs(work: Path, n_train: int, n_test: int) -> dict[str, str]:
    rows = read(SHARED / "support" / "train.jsonl", None, 4)
    test_rows = read(SHARED / "support" / "test.jsonl", n_test, 5)

    def pairs(chosen_rows, pool):
        out = []
        for r in chosen_rows:
            other = next(o for o in pool if o.get("intent") != r.get("intent"))
            pool.append(pool.pop(0))
            out.append({"prompt": r["messages"][:-1], "chosen": r["messages"][-1]["content"],
                        "rejected": other["messages"][-1]["content"]})
        return out

    pool = rows[n_train:]
    return {"train": write(work / "support-pairs" / "train.jsonl", pairs(rows[:n_train], pool)),
            "test": write(work / "support-pairs" / "test.jsonl", pairs(test_rows, pool))}


GRADERS = [{"type": "multi", "name": "right_word",
            "graders": {"right": {"type": "string_check", "input": "{{sample.output_text}}",
                                  "reference": "{{item.label}}", "operation": "ilike"},
                        "one_word": {"type": "regex", "pattern": r"^\W*(positive|negative)\W*$", "flags": "i"}},
            "calculate_output": "right * one_word"}]


def recipes(work: Path, data: dict) -> dict[str, dict]:
    common = {"task": "generate", "model": "smollm2-135m-instruct", "method": "lora",
              "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "eval": {"max_samples": 100}}
    short = {"epochs": 1, "batch_size": 8, "max_length": 128, "eval_every": 20, "log_every": 5}
    sst = data["sst2-pairs"]
    out = {
        "dpo": {**common, "objective": "dpo", "data": sst, "train": {**short, "lr": 5e-4},
                "generate": {"max_new_tokens": 4}},
        "simpo": {**common, "objective": "simpo", "data": sst, "train": {**short, "lr": 5e-4},
                  "generate": {"max_new_tokens": 4}},
        "orpo": {**common, "objective": "orpo", "data": sst, "train": {**short, "lr": 5e-4},
                 "generate": {"max_new_tokens": 4}},
        # kto at the objectives' default rate (LoRA 5e-5): at 5e-4 it pushed every answer down
        "kto": {**common, "objective": "kto", "data": data["sst2-judged"], "train": {**short, "epochs": 2},
                "generate": {"max_new_tokens": 4}},
        "grpo": {**common, "objective": "grpo", "data": data["sst2-prompts"],
                 "train": {"epochs": 1, "batch_size": 4, "max_length": 128, "lr": 5e-4, "eval_every": 25,
                           "log_every": 5},
                 "grpo": {"num_generations": 8, "max_new_tokens": 4, "temperature": 1.0},
                 "generate": {"max_new_tokens": 4}, "rewards": GRADERS},
        "dpo-support": {**common, "objective": "dpo", "data": data["support-pairs"],
                        "train": {**short, "lr": 5e-4, "max_length": 256, "batch_size": 4},
                        "generate": {"max_new_tokens": 48}, "eval": {"max_samples": 40}},
    }
    for name, r in out.items():
        r["output"] = str(work / "runs" / name)
    return out


HEADLINE = {"dpo": "preference_accuracy", "simpo": "preference_accuracy", "orpo": "preference_accuracy",
            "kto": "logp_margin", "grpo": "reward", "dpo-support": "preference_accuracy"}


def run(name: str, recipe: dict, work: Path) -> dict:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    t0 = time.time()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "tuneline"), "train", str(path), "--overwrite", "--force"],
                          text=True, capture_output=True)
    wall = time.time() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return {"name": name, "error": proc.returncode, "wall_s": round(wall)}
    ev = json.loads((Path(recipe["output"]) / "eval.json").read_text())
    manifest = json.loads((Path(recipe["output"]) / "run.json").read_text())
    key = HEADLINE[name]
    extra = ["preference_accuracy", "logp_margin", "reward", "pass_rate", "exact_match", "chrf"]
    return {"name": name, "metric": key, "tuned": ev["tuned"].get(key), "base": ev["baseline"].get(key),
            "figures": {k: [ev["tuned"].get(k), ev["baseline"].get(k)] for k in extra if k in ev["tuned"]},
            "forgetting": (ev.get("forgetting") or {}).get("relative_change"),
            "train_s": round(manifest.get("train_seconds") or 0), "wall_s": round(wall), "rows": manifest.get("rows")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/tuneline-objectives")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--train-rows", type=int, default=400)
    ap.add_argument("--test-rows", type=int, default=100)
    a = ap.parse_args()
    work = Path(a.work)
    data = sst2_data(work, a.train_rows, a.test_rows)
    data["support-pairs"] = support_pairs(work, 160, 40)
    results = []
    for name, recipe in recipes(work, data).items():
        if a.only and name not in a.only:
            continue
        print(f"== {name}", flush=True)
        results.append(run(name, recipe, work))
        print(json.dumps(results[-1]), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| run | metric | tuned | base | other figures (tuned / base) | forgetting | train s | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | failed (exit {r['error']}) | | | | | | {r['wall_s']} |")
            continue
        other = ", ".join(f"{k} {t:.3f} / {b:.3f}" for k, (t, b) in r["figures"].items()
                          if k != r["metric"] and t is not None and b is not None)
        fg = f"{100 * r['forgetting']:+.1f} %" if r["forgetting"] is not None else "-"
        print(f"| {r['name']} | {r['metric']} | {r['tuned']:.3f} | {r['base']:.3f} | {other} | {fg} | "
              f"{r['train_s']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
