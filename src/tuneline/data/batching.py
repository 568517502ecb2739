"""Turn examples into batches: length-grouped order and dynamic padding."""

from __future__ import annotations

import numpy as np
import torch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees the same order.

    With grouping, rows are shuffled, cut into mega-batches of 50 batches, sorted by length
    inside each, and the batches shuffled again: little padding, still random.
    """
    rng = np.random.default_rng(seed)
    order = _epoch_order(lengths, rng, batch_size * 50 if group_by_length else None)
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return _shuffled(batches, rng) if group_by_length else batches


def token_batches(lengths, budget: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """The batches of one epoch cut by tokens instead of rows (train.batch_tokens): rows, in the
    order epoch_batches would take them, are gathered while their real (unpadded) tokens stay
    within `budget`; a row longer than the budget goes alone. Every step then trains about the
    same number of tokens, so a GPU step is never a few short rows bound by fixed per-step cost.
    Every row appears once; a pure function of (lengths, budget, seed, group_by_length)."""
    rng = np.random.default_rng(seed)
    lens = np.asarray(lengths, dtype=np.int64)
    mean = max(1.0, float(lens.mean())) if len(lens) else 1.0
    order = _epoch_order(lens, rng, max(1, round(50 * budget / mean)) if group_by_length else None)
    batches: list[list[int]] = []
    held = budget + 1  # tokens in the last batch; more than the budget: start a new one
    for i in order.tolist():
        n = int(lens[i])
        if held + n > budget:
            batches.append([])
            held = 0
        batches[-1].append(i)
        held += n
    return _shuffled(batches, rng) if group_by_length else batches


def _epoch_order(lengths, rng: np.random.Generator, mega: int | None) -> np.ndarray:
    """The epoch's row order: a permutation; with `mega`, sorted by length (longest first) inside
    consecutive chunks of `mega` rows, so neighbouring rows are alike in length."""
    order = rng.permutation(len(lengths))
    if mega is None:
        return order
    lens = np.asarray(lengths)
    chunks = [order[s:s + mega][np.argsort(-lens[order[s:s + mega]], kind="stable")]
              for s in range(0, len(order), mega)]
    return np.concatenate(chunks) if chunks else order


def _shuffled(batches: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
    return [batches[i] for i in rng.permutation(len(batches))]


def train_batches(lengths, tc, epoch: int) -> list[list[int]]:
    """The training batches of `epoch` for a recipe's train section: by train.batch_tokens when
    set, else by train.batch_size rows. The seed is the run's seed and the epoch."""
    seed = tc.seed * 1000 + epoch
    if tc.batch_tokens:
        return token_batches(lengths, tc.batch_tokens, seed, tc.group_by_length)
    return epoch_batches(lengths, tc.batch_size, seed, tc.group_by_length)


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """For evaluation: longest first, so the padding per batch is minimal (order restored by index)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


# A forward pass costs about this many tokens' worth of work whatever its size: reading every
# weight from memory (MiniLM-L6, 1 thread: ~9 ms a pass, 0.18 ms a token; both grow with the
# model). Serving batches of 25 SST-2 sentences: one pass each 103 texts/s; groups at 0, 16,
# 32, 48, 64, 96: 80, 120, 135, 137, 142, 137.
FORWARD_OVERHEAD_TOKENS = 48


def padding_groups(lengths: list[int], max_rows: int, overhead: int = FORWARD_OVERHEAD_TOKENS) -> list[list[int]]:
    """Rows cut into forward passes that waste the least: each group is padded to its longest
    row, and a pass costs `overhead` tokens more. Returns index lists, longest rows first, each
    of at most `max_rows` rows; every index appears once. Minimal sum of (rows x longest +
    overhead) over groups of the length-sorted rows, by dynamic programming (a pass over texts of
    25 tokens on average, padded to the longest of 25, computes 1.85x the tokens it needs)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    n = len(order)
    lens = [int(lengths[i]) for i in order]
    best = [0.0] + [float("inf")] * n        # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_rows), j):  # the last group is sorted rows i..j-1, widest lens[i]
            cost = best[i] + (j - i) * lens[i] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j].tolist())
        j = cut[j]
    return groups[::-1]


def pad_batch(seqs: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        else:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def split_by_tokens(rows: list[int], lengths, budget: int | None) -> list[list[int]]:
    """Cut one batch into micro-batches of at most `budget` padded tokens (rows x longest row),
    longest rows first so rows of one piece are alike in length; a row longer than the budget
    goes alone. The pieces' gradients, weighted by their share of the loss, sum to the batch's."""
    if budget is None or len(rows) <= 1:
        return [rows]
    ordered = sorted(rows, key=lambda i: -int(lengths[i]))
    pieces: list[list[int]] = []
    for i in ordered:
        # the piece's width is its first (longest) row
        if pieces and (len(pieces[-1]) + 1) * int(lengths[pieces[-1][0]]) <= budget:
            pieces[-1].append(i)
        else:
            pieces.append([i])
    return pieces


def pack_rows(rows: list[int], lengths, capacity: int) -> list[list[int]]:
    """Rows laid end to end into sequences of at most `capacity` tokens (first fit, longest rows
    first; a row longer than `capacity` goes alone). Every row appears once; the order inside a
    sequence is the order rows were placed. Packing removes the padding of a batch: 64 chat rows of
    at most 512 tokens (165 on average) padded to the longest compute 3x the tokens they hold."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(rows, key=lambda r: -int(lengths[r])):
        n = int(lengths[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def packed_batch(seqs: list[list[int]], labels: list[list[int]], bins: list[list[int]], pad_id: int,
                 ignore: int) -> dict:
    """The packed sequences of `bins` (indices into seqs/labels) as a batch: input_ids, position_ids
    that restart at 0 for every row (transformers then keeps attention inside each row) and labels
    with each row's first token ignored (it is not predicted from the row before). No
    attention_mask: its absence is what tells transformers the rows are packed. Sequences are
    right-padded to the longest with pad tokens of positions 0.. (a row of their own, ignored)."""
    width = max(sum(len(seqs[i]) for i in b) for b in bins)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(bins), width), dtype=torch.long)
    lab = torch.full((len(bins), width), ignore, dtype=torch.long)
    for row, b in enumerate(bins):
        at = 0
        for i in b:
            n = len(seqs[i])
            ids[row, at:at + n] = torch.tensor(seqs[i], dtype=torch.long)
            pos[row, at:at + n] = torch.arange(n)
            lab[row, at + 1:at + n] = torch.tensor(labels[i][1:], dtype=torch.long)
            at += n
        pos[row, at:] = torch.arange(width - at)
    return {"input_ids": ids, "position_ids": pos, "labels": lab}
