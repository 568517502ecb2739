"""Per-process peak memory of 2-process training: train.sharding fsdp vs none (plain data parallel).

Builds a random Llama (about 134M parameters, untied embeddings) once, then trains a few full-tuning
steps of the generate task on chat rows with each sharding setting and reports every rank's peak
RSS at the end of the training loop (before rank 0 builds the final model and evaluates).

    python benchmarks/fsdp_memory.py [--work /tmp/fsdp-mem] [--steps 4]

It relaunches itself under torchrun (2 gloo processes) for each setting, both with
MALLOC_MMAP_THRESHOLD_=131072 as `tuneline train --nproc` sets it for fsdp on a CPU (--glibc-default:
without it; see distributed.launch for why). Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

CHAT = [{"messages": [{"role": "user", "content": f"what is item {i} made of"},
                      {"role": "assistant", "content": f"item {i} is made of wood, glue and {i % 7} screws"}]}
        for i in range(48)]


def build(work: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    model = work / "llama-134m"
    if not (model / "config.json").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import minilm_dir

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=30522, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                          pad_token_id=0, tie_word_embeddings=False)
        LlamaForCausalLM(cfg).save_pretrained(str(model))
        AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(str(model))
    for split, rows in (("train", CHAT[:40]), ("test", CHAT[40:])):
        (work / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model


def rank_main(recipe: Path, out: Path, report: Path) -> None:
    import tuneline
    from tuneline.training.loop import Callback

    import psutil

    class PeakRss(Callback):
        def on_train_start(self, trainer, state):
            self.start = psutil.Process().memory_info().rss  # model loaded (and sharded)
            self.start_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

        def on_train_end(self, trainer, state):
            rank = int(os.environ["RANK"])
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            (report / f"rank{rank}.json").write_text(json.dumps(
                {"rank": rank, "peak_rss": peak, "rss_at_start": self.start, "peak_before_training": self.start_peak,
                 "rss_at_end": psutil.Process().memory_info().rss}))

    tuneline.train(recipe, output=out, overwrite=True, callbacks=[PeakRss()])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/fsdp-mem")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--glibc-default", action="store_true", help="keep glibc's adaptive mmap threshold")
    ap.add_argument("--rank-run", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_run:
        return rank_main(*(Path(p) for p in a.rank_run))
    import yaml

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = build(work)
    results = {}
    for sharding in ("none", "fsdp"):
        recipe = work / f"recipe-{sharding}.yaml"
        recipe.write_text(yaml.safe_dump({
            "task": "generate", "model": str(model), "method": "full",
            "data": {"train": str(work / "train.jsonl"), "test": str(work / "test.jsonl")},
            "train": {"max_steps": a.steps, "batch_size": 4, "max_length": 64, "lr": 1e-4, "log_every": 1,
                      "sharding": sharding, "precision": "fp32"},
            "generate": {"max_new_tokens": 2}, "eval": {"forgetting": {"enabled": False}},
        }))
        report = work / f"rss-{sharding}"
        report.mkdir(exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        if not a.glibc_default:
            env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, "--rank-run", str(recipe), str(work / f"run-{sharding}"), str(report)],
                       env=env, check=True)
        results[sharding] = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    params = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    mib = 2 ** 20
    print(f"\nweights file {params / mib:.0f} MiB; RSS per rank in MiB (peak before training = loading):")
    print("  sharding  rank  peak-before  at-start  peak  at-end")
    for k, ranks in results.items():
        for r in ranks:
            print(f"  {k:8s}  {r['rank']:4d}  {r['peak_before_training'] / mib:11.0f}  {r['rss_at_start'] / mib:8.0f}  "
                  f"{r['peak_rss'] / mib:4.0f}  {r['rss_at_end'] / mib:6.0f}")


if __name__ == "__main__":
    main()
