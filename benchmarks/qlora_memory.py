"""Memory of an adapter step with the base in fp32 (method: lora) and in 4 bits (method: qlora).

    python benchmarks/qlora_memory.py                      # SmolLM2-1.7B shape, 256 tokens, CPU, fp32
    python benchmarks/qlora_memory.py --shape 360m --tokens 512
    MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/qlora_memory.py   # glibc returns freed temporaries

A random-weight Llama of a SmolLM2 shape (speed_vs_hf.shaped_model; weights do not change memory)
is loaded, given the method (as the training loop does, with its layer swaps), and trained for two
steps of one row; each method runs in its own process. Printed per method: seconds to load and
prepare (qlora quantizes every projection of the blocks), seconds of the second step, resident
memory after preparing and after the steps, and the process's peak.

Reading the figures: the loader maps the checkpoint file, so pages it read count as resident while
mapped (clean, reclaimable file pages; quantizing reads them all, hence the peak at load). glibc
keeps freed temporaries of up to 32 MB in its heap by default (its dynamic mmap threshold), which
inflates "after the steps" for both methods; a fixed MALLOC_MMAP_THRESHOLD_ shows what the step
needs, at some speed (each large allocation becomes fresh pages).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 2 ** 30


def child(args) -> None:
    import psutil
    import torch
    from transformers import AutoModelForCausalLM

    from tuneline.recipe import recipe_from_dict
    from tuneline.tasks import get_task
    from tuneline.training.loop import swap_training_layers
    from tuneline.training.methods import apply_method

    torch.set_num_threads(args.threads)
    rss = lambda: psutil.Process().memory_info().rss / GIB  # noqa: E731
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    recipe = recipe_from_dict({"task": "generate", "model": args.model, "method": args.method, "data": {"train": "x"},
                               "train": {"precision": "fp32"}, "lora": {"r": 16, "alpha": 32, "dropout": 0.05}})
    model = apply_method(model, recipe, get_task("generate"))
    swap_training_layers(model, "cpu", compiled=False)
    prepared, prepare_s = rss(), time.perf_counter() - t0
    ids = torch.randint(5, 4000, (1, args.tokens))
    model.train()
    for _ in range(2):
        t = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        step_s = time.perf_counter() - t
    print("RESULT " + json.dumps({"prepare_s": prepare_s, "step_s": step_s, "rss_prepared": prepared,
                                  "rss_after_steps": rss(),
                                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="1.7b", help="a SmolLM2 shape of speed_vs_hf.py (135m, 360m, 1.7b)")
    p.add_argument("--tokens", type=int, default=256, help="tokens of the one training row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="lora,qlora")
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        return child(args)
    sys.path.insert(0, str(Path(__file__).parent))
    from speed_vs_hf import shaped_model

    with tempfile.TemporaryDirectory() as tmp:  # the 1.7B shape's weights are 6.4 GB
        folder = shaped_model(args.shape, Path(tmp) / f"llama-{args.shape}")
        run_methods(args, folder)


def run_methods(args, folder: str) -> None:
    print(f"SmolLM2-{args.shape} shape, one row of {args.tokens} tokens, {args.threads} threads, fp32\n")
    print(f"{'method':<8}{'prepare s':>10}{'step s':>8}{'RSS prepared':>14}{'RSS after steps':>17}{'peak':>7}  (GiB)")
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--method", method, "--model", folder, "--tokens", str(args.tokens),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{method} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        r = json.loads(line[7:])
        print(f"{method:<8}{r['prepare_s']:>10.1f}{r['step_s']:>8.1f}{r['rss_prepared']:>14.2f}"
              f"{r['rss_after_steps']:>17.2f}{r['peak']:>7.2f}")


if __name__ == "__main__":
    main()
