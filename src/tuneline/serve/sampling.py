"""The next token of every row of a running batch, each row with its own request's temperature and
top_p, and the text a row's tokens have made so far.

`model.generate` takes one temperature and one top_p for a whole batch; continuous batching mixes
requests that asked for different ones, so the two warpers are applied per row here. They follow
transformers' TemperatureLogitsWarper and TopPLogitsWarper (a test checks they agree); the run's
repetition_penalty and no_repeat_ngram_size are the same for every row and use transformers' own
processors.
"""

from __future__ import annotations

import torch

from ..tasks.generate import GREEDY_BELOW


def processors(options):
    """transformers' logits processors for the run's `generate:` loop breakers (none by default)."""
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    out = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
    if options.no_repeat_ngram_size:
        out.append(NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size))
    return out


def top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, keep the smallest set of most likely tokens whose probability reaches top_p
    (always at least one); the rest get -inf. top_p: [B]."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative <= (1 - top_p)[:, None]
    drop[:, -1] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def next_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] next tokens from [B, V] logits: the most likely where temperature < GREEDY_BELOW,
    else a sample at that row's temperature within its top_p."""
    out = logits.argmax(-1)
    sampled = temperature >= GREEDY_BELOW
    if sampled.any():
        rows = sampled.nonzero().squeeze(1)
        scores = logits[rows].float() / temperature[rows, None]
        if bool((top_p[rows] < 1).any()):
            scores = top_p_filter(scores, top_p[rows])
        out[rows] = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return out


class TextSoFar:
    """A row's answer as text, growing a token at a time: `add` gives the new final text. Text
    is final once the decoded answer still starts with it (a tokenizer may rewrite a word's
    start as more tokens come) and does not end in half a character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""      # what `add` has given so far

    def decoded(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        full = self.decoded()
        if full.endswith("\ufffd") or not full.startswith(self.text):
            return ""
        piece, self.text = full[len(self.text):], full
        return piece
