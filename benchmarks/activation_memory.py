"""Activation memory of one training forward, counted exactly, on any device: the bytes of every
tensor autograd saves for the backward pass (weights excluded), per token.

    python benchmarks/activation_memory.py --shape 1.7b --tokens 512
    python benchmarks/activation_memory.py --shape 135m --precision fp32 --dropout 0 --checkpoint all

Why counting and not a device's peak: no GPU here, and the saved tensors are what a GPU would hold
too (same dtypes under autocast, frozen weights in bf16 as tuneline keeps them there). Rows are
packed (position ids, no mask), so attention takes the flash path that saves only q, k, v, the
output and its log-sum-exp, as on a GPU. The model is a random-weight Llama of the real shape,
with `--layers` blocks (the per-block figure is the same for every block); the printout scales
it to the full depth. Under --checkpoint all, a block keeps only its input, and during its
backward recomputes its own activations (one block's worth, counted as "recompute").
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = {  # SmolLM2's configs (hidden, intermediate, layers, heads, kv heads); vocabulary 49,152
    "135m": (576, 1536, 30, 9, 3),
    "360m": (960, 2560, 32, 15, 5),
    "1.7b": (2048, 8192, 24, 32, 32),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(shape: str, layers: int, dropout: float, rank: int, fused: bool = True, lean: bool = True):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, depth, heads, kv = SHAPES[shape]
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=49152,
                      max_position_embeddings=8192, tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout,
                                             target_modules=TARGETS))
    if lean:  # as the training loop does (training/lean_activations.py)
        from tuneline.training.lean_activations import lean_activations

        lean_activations(model)
    if fused:  # as the training loop does, and redrawing masks in backward as on a GPU
        from tuneline.training import fused_lora

        fused_lora.KEEPS_MASK = ()
        fused_lora.fuse_lora(model)
    return model, depth


class SavedBytes:
    """saved_tensors_hooks that sum the bytes of distinct storages autograd keeps, parameters excluded."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in self.params and s.data_ptr() not in self.seen:
            self.seen[s.data_ptr()] = s.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def measure(model, tokens: int, dtype, checkpoint_blocks: bool) -> dict:
    from tuneline.tasks.chunked_ce import answer_cross_entropy
    from tuneline.tasks.generate import _body_and_head

    body, head = _body_and_head(model)
    if checkpoint_blocks:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    ids = torch.randint(0, 49152, (1, tokens))
    pos = torch.arange(tokens)[None]
    counter = SavedBytes(model)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), autocast:
        hidden = body(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        after_body = counter.total
        loss = answer_cross_entropy(head, hidden[0, :-1], ids[0, 1:])
    return {"body": after_body, "head": counter.total - after_body, "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="1.7b")
    ap.add_argument("--layers", type=int, default=2, help="blocks built (the figure per block is scaled)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--checkpoint", choices=["none", "all"], default="none")
    ap.add_argument("--peft-dropout", action="store_true", help="PEFT's own LoRA dropout, not tuneline's fused one")
    ap.add_argument("--plain-layers", action="store_true", help="transformers' own norms and MLPs, not the lean ones")
    ap.add_argument("--step-tokens", type=int, default=11_000, help="tokens per step for the printed total")
    a = ap.parse_args()
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.precision]
    model, depth = build(a.shape, a.layers, a.dropout, a.rank, not a.peft_dropout, not a.plain_layers)
    if dtype != torch.float32:
        from tuneline.training.frozen_precision import cast_frozen

        cast_frozen(model, dtype)  # as the loop keeps an adapter run's frozen weights on a GPU
    ckpt = a.checkpoint == "all"
    m = measure(model, a.tokens, dtype, ckpt)
    per_block = m["body"] / a.layers / a.tokens
    head = m["head"] / a.tokens
    recompute = 0.0
    if ckpt:  # one block's full activations live again during its backward
        full, _ = build(a.shape, 1, a.dropout, a.rank, not a.peft_dropout, not a.plain_layers)
        if dtype != torch.float32:
            cast_frozen(full, dtype)
        recompute = measure(full, a.tokens, dtype, False)["body"] / a.tokens
    step_gib = (per_block * depth + head + recompute) * a.step_tokens / 2 ** 30
    how = "PEFT's" if a.peft_dropout else "fused"
    layers = "plain" if a.plain_layers else "lean"
    print(f"{a.shape} LoRA r{a.rank}, {how} dropout {a.dropout}, {layers} norms and MLPs, {a.precision}, "
          f"checkpoint {a.checkpoint}, {a.tokens} tokens:")
    print(f"  per block  {per_block / 1024:8.1f} KiB/token  x {depth} blocks = {per_block * depth / 2**20:.2f} MiB/token")
    print(f"  head+loss  {head / 1024:8.1f} KiB/token")
    if ckpt:
        print(f"  recompute  {recompute / 1024:8.1f} KiB/token (one block, during its backward)")
    print(f"  at {a.step_tokens:,} tokens in one forward: {step_gib:.1f} GiB of saved activations")


if __name__ == "__main__":
    main()
