"""Inference speed: tuneline's batched predict / generate against transformers.pipeline.

    python benchmarks/inference_vs_pipeline.py --classify runs/reviews --generate runs/support

Classification: the SST-2 validation texts (../shared/data/sst2), batch 1 and 32, texts/s.
Generation: the first support test prompts (../shared/data/support), greedy, max_new_tokens 48,
batch 1 and 32, generated tokens/s. Both sides load the same run's merged model; the pipeline
gets the same batch size, and for generation the same left padding and stop tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_classify(run_dir: str, n: int) -> None:
    import tuneline
    from transformers import pipeline

    texts = [json.loads(l)["text"] for l in open(SHARED / "sst2" / "validation.jsonl")][:n]
    run = tuneline.load_run(run_dir)
    pipe = pipeline("text-classification", model=str(Path(run_dir) / "model"), device="cpu")
    print(f"\nclassify: {run_dir}, {len(texts)} SST-2 texts")
    print(f"{'batch':>6}{'tuneline texts/s':>20}{'pipeline texts/s':>20}{'ratio':>8}  agree")
    for bs in (1, 32):
        ours, t_ours = timed(lambda: run.predict(texts, batch_size=bs))
        theirs, t_pipe = timed(lambda: pipe(texts, batch_size=bs, truncation=True, max_length=run.max_length))
        agree = sum(a["label"] == b["label"] for a, b in zip(ours, theirs)) / len(texts)
        print(f"{bs:>6}{len(texts) / t_ours:>20.1f}{len(texts) / t_pipe:>20.1f}{t_pipe / t_ours:>7.2f}x  {agree:.3f}")


def bench_generate(run_dir: str, n: int, max_new: int) -> None:
    import tuneline
    from transformers import pipeline

    rows = [json.loads(l) for l in open(SHARED / "support" / "test.jsonl")][:n]
    convs = [[m for m in r["messages"] if m["role"] != "assistant"][:1] for r in rows]
    run = tuneline.load_run(run_dir)
    tok = run.tokenizer
    tok.padding_side = "left"
    pipe = pipeline("text-generation", model=run.model, tokenizer=tok, device="cpu")
    print(f"\ngenerate: {run_dir}, {len(convs)} support prompts, greedy, max_new_tokens {max_new}")
    print(f"{'batch':>6}{'tuneline tok/s':>18}{'pipeline tok/s':>18}{'ratio':>8}")
    for bs in (1, 32):
        ours, t_ours = timed(lambda: [run.generate(convs[i:i + bs], max_new_tokens=max_new)
                                      for i in range(0, len(convs), bs)])
        ours = [a for part in ours for a in part]
        theirs, t_pipe = timed(lambda: pipe(convs, batch_size=bs, max_new_tokens=max_new, do_sample=False,
                                            return_full_text=False, pad_token_id=tok.pad_token_id))
        n_ours = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in ours)
        n_pipe = sum(len(tok(t[0]["generated_text"], add_special_tokens=False)["input_ids"]) for t in theirs)
        print(f"{bs:>6}{n_ours / t_ours:>18.1f}{n_pipe / t_pipe:>18.1f}{(n_ours / t_ours) / (n_pipe / t_pipe):>7.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classify", help="run folder of a classify run")
    p.add_argument("--generate", help="run folder of a generate run")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    a = p.parse_args()
    if a.classify:
        bench_classify(a.classify, a.texts)
    if a.generate:
        bench_generate(a.generate, a.prompts, a.max_new_tokens)


if __name__ == "__main__":
    main()
