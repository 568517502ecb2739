"""The rows of a running generation batch, and the two changes continuous batching makes to them
between decoding steps: rows joining (a new batch's prefill) and rows leaving (finished answers).

A batch is the left-padded layout of `model.generate`: every row's cache has the same length T,
a row's padding is on the left and masked out, and each row's next position is the count of its
real tokens. Joining pads the shorter batch on the left; leaving drops rows, then the columns
that only padding is left in. Only transformers' plain `DynamicLayer` caches are changed here
(`supported` says whether a cache is one); sliding-window or linear-attention layers keep other
state that this layout does not describe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Rows:
    """cache: the model's KV cache, T positions per row. mask: [B, T] 1 where a row has a real
    token. tokens: [B, T + 1] every row's tokens so far, left-padded with the pad id (the logits
    processors read them), whose last column is `tokens[:, -1]`: the token each row feeds next,
    not in the cache yet."""

    cache: object
    mask: torch.Tensor
    tokens: torch.Tensor

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def positions(self) -> torch.Tensor:
        """[B, 1]: the position of the token each row feeds next."""
        return self.mask.sum(-1, keepdim=True)


class Prefix:
    """Tokens many prompts start with (the chat template's opening and the system prompt) and
    their keys and values, computed once: a prompt that starts with them prefills only the rest.
    Its rows are laid out [prefix, padding, rest of the prompt], the padding masked out."""

    def __init__(self, ids: list[int], cache):
        self.ids = list(ids)
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def starts(self, prompt: list[int]) -> bool:
        return len(prompt) > len(self.ids) and prompt[:len(self.ids)] == self.ids

    def cache(self, rows: int, empty):
        """`empty` (a new cache) filled with the prefix for `rows` rows."""
        for i, (k, v) in enumerate(self.layers):
            empty.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
        return empty

    def ids_tensor(self, rows: int, device) -> torch.Tensor:
        return torch.tensor([self.ids], dtype=torch.long, device=device).expand(rows, -1)


def supported(cache) -> bool:
    """Whether `cache` is one this module can join and cut: every layer a plain DynamicLayer."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _pad_left(x: torch.Tensor, width: int, dim: int, value=0) -> torch.Tensor:
    if width == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [width, 0]
    return F.pad(x, pad, value=value)


def join(a: Rows, b: Rows, pad_id: int) -> Rows:
    """a's rows then b's, both padded on the left to the longer cache. a is reused (its cache object)."""
    ta, tb = a.mask.shape[1], b.mask.shape[1]
    da, db = max(0, tb - ta), max(0, ta - tb)
    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([_pad_left(la.keys, da, 2), _pad_left(lb.keys, db, 2)], 0)
        la.values = torch.cat([_pad_left(la.values, da, 2), _pad_left(lb.values, db, 2)], 0)
    mask = torch.cat([_pad_left(a.mask, da, 1), _pad_left(b.mask, db, 1)], 0)
    tokens = torch.cat([_pad_left(a.tokens, da, 1, pad_id), _pad_left(b.tokens, db, 1, pad_id)], 0)
    return Rows(a.cache, mask, tokens)


def keep(rows: Rows, kept: list[int]) -> Rows:
    """Only rows `kept` (in that order), without the leading columns that are padding in all of them."""
    idx = torch.tensor(kept, dtype=torch.long, device=rows.mask.device)
    mask = rows.mask[idx]
    real = mask.any(0).nonzero()
    start = int(real[0]) if len(real) else mask.shape[1]
    for layer in rows.cache.layers:
        layer.keys = layer.keys[idx, :, start:]
        layer.values = layer.values[idx, :, start:]
    return Rows(rows.cache, mask[:, start:], rows.tokens[idx, start:])
