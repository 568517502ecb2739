"""Log-probabilities of answers under a causal LM: what preference and reward objectives compare.

A batch here is what GenerateTask.collate makes: input_ids, attention_mask and labels (IGNORE
outside the answer tokens). The output layer runs only on answer positions, as in
GenerateTask.loss: full-vocabulary logits for every prompt token are most of the memory.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..data.chat import IGNORE


def token_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per answer token (labels != IGNORE after the shift), in row-major order: its log-prob under
    `model` and the index of its row. Differentiable. `position_ids` in the batch is passed on
    (left-padded rows need them to match how they were generated)."""
    from .generate import _body_and_head

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = _body_and_head(model)
    if parts is not None:
        hidden = parts[0](**inputs).last_hidden_state
        logits = parts[1](hidden[:, :-1][keep]).float()
    else:  # the model's own forward (prompt tuning prepends virtual tokens: keep the last positions)
        logits = model(**inputs).logits
        logits = logits[:, -batch["input_ids"].shape[1]:][:, :-1][keep].float()
    # cross_entropy is log_softmax + gather in one kernel, without a second vocabulary-sized copy
    logps = -F.cross_entropy(logits, labels[keep], reduction="none")
    return logps, keep.nonzero()[:, 0]


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-prob of its answer tokens, and how many there are."""
    logps, rows = token_logps(model, batch)
    n = batch["input_ids"].shape[0]
    sums = torch.zeros(n, dtype=logps.dtype, device=logps.device).index_add(0, rows, logps)
    counts = (batch["labels"][:, 1:] != IGNORE).sum(1)
    return sums, counts


def is_adapter_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


@contextlib.contextmanager
def as_reference(model):
    """The untuned base inside an adapter model (its adapter switched off: no second copy), in
    eval mode (no dropout noise in a reference); a plain model as it is."""
    was = model.training
    model.eval()
    try:
        with model.disable_adapter() if is_adapter_model(model) else contextlib.nullcontext(), torch.no_grad():
            yield model
    finally:
        model.train(was)


@torch.no_grad()
def split_logps(model, data, collate, pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Summed answer log-probs of every sequence of an encoded split, in the order its collate
    emits them per row (shape [rows, sequences per row]); model in eval mode, no gradients."""
    from ..data.batching import sorted_batches

    was = model.training
    model.eval()
    out: dict[int, torch.Tensor] = {}
    for idx in sorted_batches(data.lengths, batch_size):
        b = {k: v.to(device) for k, v in collate(data, idx, pad_id).items() if k != "reference"}
        sums, _ = sequence_logps(model, b)
        per_row = sums.float().cpu().view(-1, len(idx)).T  # collate stacks [first of each row; second...]
        for j, i in enumerate(idx):
            out[i] = per_row[j]
    model.train(was)
    return torch.stack([out[i] for i in range(len(data))])
