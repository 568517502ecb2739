"""The whole feedback loop on a real chat model: serve, rate, retrain, promote (or not) and why.

1. A support assistant is tuned (SmolLM2-135M + LoRA, sft) on the project's sample chats
   (examples/support), briefly: --steps optimizer steps.
2. It is served through the real service app (FastAPI TestClient: the same routes, store and
   feedback as `tuneline serve`); a simulated user asks the test questions and rates each answer:
   thumbs up when it is brief (at most --max-words words) and names no made-up contact,
   thumbs down otherwise; every --correct-every-th disliked answer also gets a correction (the
   reference answer of that question).
3. `tuneline retrain` (objective auto -> kto, since answers were rated) trains a challenger and
   judges it against the champion on the original test split and the held-out ratings.

    .venv/bin/python benchmarks/chat_feedback_loop.py [--work /tmp/tuneline-loop] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rate(answer: str, max_words: int) -> str:
    """The simulated user: likes brief answers that do not invent an address or a phone number."""
    invented = "@" in answer or any(ch.isdigit() for ch in answer.replace("5-7", ""))
    return "up" if len(answer.split()) <= max_words and not invented else "down"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/tuneline-loop")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-words", type=int, default=25)
    ap.add_argument("--correct-every", type=int, default=3)
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    import tuneline
    from fastapi.testclient import TestClient

    from tuneline.serve.app import ServeSettings, create_app
    from tuneline.serve.retrain import retrain

    t0 = time.time()
    run = tuneline.train(ROOT / "examples" / "support" / "recipe.yaml", output=work / "support",
                         overrides=[f"train.max_steps={a.steps}", "eval.max_samples=20"]).path
    print(f"champion trained in {time.time() - t0:.0f} s", flush=True)

    questions = [json.loads(line)["messages"] for line in (ROOT / "examples" / "support" / "test.jsonl").open()]
    db = f"sqlite:///{work / 'monitor.db'}"
    ratings = {"up": 0, "down": 0, "corrections": 0}
    t0 = time.time()
    with TestClient(create_app(ServeSettings(run_dir=str(run), db_url=db))) as client:
        name = client.get("/v1/models").json()["data"][0]["id"]
        for i, conv in enumerate(questions):
            first_user = next(i for i, m in enumerate(conv) if m["role"] == "user")
            prompt = conv[:first_user + 1]  # a system turn if the chat has one, and the first question
            reply = client.post("/v1/chat/completions", json={"model": name, "messages": prompt,
                                                              "max_tokens": 64}).json()
            answer = reply["choices"][0]["message"]["content"]
            verdict = rate(answer, a.max_words)
            body = {"request_id": reply["id"], "rating": verdict}
            ratings[verdict] += 1
            if verdict == "down" and i % a.correct_every == 0:
                reference = next(m["content"] for m in conv[len(prompt):] if m["role"] == "assistant")
                body["corrected_answer"] = reference
                ratings["corrections"] += 1
            client.post("/v1/feedback", json=body)
        preview = client.get("/api/feedback").json().get("next_retrain")
    print(f"served and rated {len(questions)} answers in {time.time() - t0:.0f} s: {ratings}", flush=True)
    print("dashboard, next retrain:", json.dumps(preview, default=str)[:600], flush=True)

    t0 = time.time()
    decision = retrain(run, db_url=db)
    print(f"retrain took {time.time() - t0:.0f} s", flush=True)
    (work / "decision.json").write_text(json.dumps(decision, indent=2, default=str))
    print(json.dumps({k: decision.get(k) for k in ("objective", "learned_from", "promoted", "reasons", "judged",
                                                     "champion", "challenger")}, indent=2, default=str))


if __name__ == "__main__":
    main()
