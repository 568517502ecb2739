"""The zero-shot baseline of a classifier whose base is a chat model: the untuned model is asked
to pick one of the labels, and its answer parsed back to a label (unparseable counts as wrong)."""

from __future__ import annotations

import re

import torch

from ..recipe import eval_batch_size
from .metrics import classification_metrics

PROMPT = ("Classify the text into exactly one of these labels: {labels}.\n\n"
          "Text: {text}\n\nAnswer with the label only.")


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def parse_label(answer: str, labels: list[str]) -> int | None:
    """Exact answer first, then the label the answer names first (as whole words)."""
    a = _norm(answer)
    normed = [_norm(l) for l in labels]
    for i, l in enumerate(normed):
        if a == l:
            return i
    best, best_pos = None, None
    for i, l in enumerate(normed):
        if not l:
            continue
        m = re.search(rf"\b{re.escape(l)}\b", a)
        # on ties (one label inside another, "positive" / "very positive") the longer wins
        if m and (best_pos is None or m.start() < best_pos or (m.start() == best_pos and len(l) > len(normed[best]))):
            best, best_pos = i, m.start()
    return best


def chat_base(info: dict):
    """(tokenizer, path) when the base model is a causal LM with a chat template; else None."""
    from ..models import load_tokenizer
    from .forgetting import is_causal_lm

    path, trust = info["base_model_path"], info.get("trust_remote_code", False)
    if not is_causal_lm(path, trust):
        return None
    tok = load_tokenizer(path, trust)
    if not getattr(tok, "chat_template", None):
        return None
    return tok, path


@torch.no_grad()
def zero_shot_baseline(texts: list[str], y_true: list[int], labels: list[str], info: dict, recipe, device,
                       generate, max_rows: int | None = None) -> dict | None:
    """generate(model, tokenizer, conversations, options, batch_size=, max_length=) -> answers
    (the chat task's decoding, passed in by the caller)."""
    base = chat_base(info)
    if base is None:
        return None
    tok, path = base
    from transformers import AutoModelForCausalLM

    from ..recipe import GenerateOptions

    n = min(len(texts), max_rows or len(texts))
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                              trust_remote_code=info.get("trust_remote_code", False)).to(device)
    convs = [[{"role": "user", "content": PROMPT.format(labels=", ".join(labels), text=t)}] for t in texts[:n]]
    longest = max(len(l) for l in labels)
    opts = GenerateOptions(max_new_tokens=max(8, min(32, longest + 8)), temperature=0.0)
    answers = generate(lm, tok, convs, opts, batch_size=eval_batch_size(recipe),
                       max_length=recipe.train.max_length + 64)
    del lm
    parsed = [parse_label(a, labels) for a in answers]
    # an unparseable answer is wrong: -1 matches no true label
    m = classification_metrics(y_true[:n], [-1 if p is None else p for p in parsed], labels)
    m.update(kind="zero_shot", n=n, unparseable=sum(p is None for p in parsed),
             prompt=PROMPT, examples=[{"text": texts[i], "answer": answers[i],
                                       "parsed": None if parsed[i] is None else labels[parsed[i]]}
                                      for i in range(min(5, n))])
    return m
