"""The host's cost of one LoRA training forward + backward, where the arithmetic is nearly free.

    python benchmarks/host_cost.py                  # the SmolLM2-1.7B depth (24 blocks) at width 64
    python benchmarks/host_cost.py --tokens 64 --reps 60

A GPU's short steps wait on the host: every module call, autograd node and launched kernel costs
it microseconds whatever the tensor sizes (the issue's H200 run: a step of ~1,300 tokens took
0.38 s, one of ~10,800 took 0.84 s). Here a random-weight Llama with the 1.7B shape's 24 blocks at
width 64 runs a few tokens per forward, so a step's time is what the host spends. Compared in one
process, interleaved (this machine's speed drifts between processes):

- `peft`: the plain way, PEFT's LoRA layers (what the Hugging Face Trainer runs);
- `tuneline`: the loop's swaps (lean norms and MLPs, each adapter one node with its dropout
  inside, training/fused_lora.py);

each in fp32 and in the GPU configuration (frozen weights in bf16 under bf16 autocast). Printed:
the median milliseconds per forward + backward, and the aten operations dispatched (views
excluded), about the kernels a GPU would launch.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VIEWS = {"view", "_unsafe_view", "t", "transpose", "unsqueeze", "squeeze", "expand", "slice", "select",
         "permute", "as_strided", "detach", "alias", "reshape", "split", "unbind", "_reshape_alias",
         "lift_fresh", "split_with_sizes"}


def build(way: str, gpu_config: bool, layers: int, width: int):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneline.training import fused_lora
    from tuneline.training.frozen_precision import cast_frozen
    from tuneline.training.lean_activations import lean_activations

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, vocab_size=49152, tie_word_embeddings=True)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                             target_modules=TARGETS))
    if way == "tuneline":
        fused_lora.KEEPS_MASK = ()  # as on a GPU: masks drawn by drawn_keep, redrawn in backward
        fused_lora.keep_lanes = lambda shape, p, gen: fused_lora.drawn_keep(shape, p, gen, torch.device("cpu"))
        lean_activations(model)
        fused_lora.fuse_lora(model)
        if gpu_config:
            cast_frozen(model, torch.bfloat16)
    return model.train()


def step(model, ids, gpu_config: bool) -> None:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if gpu_config else contextlib.nullcontext()
    with autocast:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    for p in model.parameters():
        p.grad = None


def count_ops(model, ids, gpu_config: bool) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in VIEWS:
                self.n[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        step(model, ids, gpu_config)
    return sum(c.n.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, 1000, (1, args.tokens))
    models = {(way, gpu): build(way, gpu, args.layers, args.width) for way in ("peft", "tuneline") for gpu in (False, True)}
    times = {k: [] for k in models}
    for _ in range(args.reps):
        for key, model in models.items():
            t0 = time.perf_counter()
            step(model, ids, key[1])
            times[key].append(time.perf_counter() - t0)
    print(f"{args.layers} blocks at width {args.width}, {args.tokens} tokens, LoRA r16 on 7 projections, "
          f"{args.threads} thread(s), median of {args.reps - 5}:")
    base = {}
    for (way, gpu), model in models.items():
        ms = statistics.median(times[(way, gpu)][5:]) * 1000
        base.setdefault(gpu, ms)
        where = "bf16 frozen + autocast" if gpu else "fp32"
        print(f"  {way:<9} {where:<23} {ms:7.1f} ms  ({ms / base[gpu]:.2f}x peft)  "
              f"{count_ops(model, ids, gpu):6d} aten ops")


if __name__ == "__main__":
    main()
