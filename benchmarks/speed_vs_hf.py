"""Speed: the same job through tuneline and through the plain Hugging Face way, in one invocation.

    python benchmarks/speed_vs_hf.py --job lora     # SmolLM2-135M + LoRA on ../shared/data/instructions
    python benchmarks/speed_vs_hf.py --job full     # MiniLM-L6 full tuning on ../shared/data/sst2
    python benchmarks/speed_vs_hf.py --job lora --device cuda --shape 1.7b --batch 8    # on a GPU
    python benchmarks/speed_vs_hf.py --job lora --device cuda --shape 1.7b --batch 64 --steps 12
    python benchmarks/speed_vs_hf.py --job lora --steps 80 --compile   # tuneline with train.compile
    python benchmarks/speed_vs_hf.py --job lora --qlora     # both sides with the base in 4 bits
    python benchmarks/speed_vs_hf.py --job lora --shape host --max-len 48   # what a step costs the host

--shape builds a random-weight Llama of a SmolLM2 size (weights do not change speed or memory) with
the built-in SmolLM2 tokenizer, so a GPU run needs no download. On a GPU both sides run bf16 (the
plain way with Trainer's bf16=True, tuneline with precision auto), MFU is against the nominal
989 TFLOP/s of an H100/H200 and against the bf16 matmul peak measured in the same run, and the peak
GPU memory of each side's training is printed.

--qlora stores both sides' base in 4 bits (NF4, double quantization): the plain way as the
transformers/PEFT QLoRA guide writes it (BitsAndBytesConfig at load, prepare_model_for_kbit_training
with its default activation checkpointing), tuneline with method: qlora.

The plain way is what a user writes: transformers.Trainer (+ PEFT for LoRA), the data collator
padding to the longest row of each (randomly drawn) batch, same model, rows, lr, batch, steps,
fp32. Each side runs in its own process (clean peak RSS). Printed per side: trained (non-padding)
tokens/s, share of padding, wall time, peak RSS (up to the end of training, which for tuneline
includes its validation passes, and for the whole process, which includes this script's own
held-out scoring), training loss, the held-out figure (LoRA: loss on
assistant tokens of held-out chats; full: SST-2 validation accuracy), model FLOP/s as a share of
the measured fp32 matmul peak; then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"]}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


NOMINAL_GPU_TFLOPS = 989  # H100 / H200 SXM, dense bf16


def matmul_peak_gflops(device: str = "cpu", seconds: float = 3.0) -> float:
    """GEMM throughput of this machine (the roofline): fp32 with the threads torch uses on a CPU,
    bf16 8192^3 on a GPU."""
    import torch

    n_dim, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a = torch.randn(n_dim, n_dim, device=device, dtype=dtype)
    b = torch.randn(n_dim, n_dim, device=device, dtype=dtype)
    a @ b
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
        _sync(device)
    return 2 * n_dim ** 3 * n / (time.perf_counter() - t0) / 1e9


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# -- random-weight models of real shapes (GPU runs: no download) ------------------------------------------
SHAPES = {  # SmolLM2 configs: hidden, intermediate, layers, heads, kv heads
    "135m": (576, 1536, 30, 9, 3), "360m": (960, 2560, 32, 15, 5), "1.7b": (2048, 8192, 24, 32, 32),
    "tiny": (64, 128, 2, 4, 2),  # a CPU check of this mode
    # the 1.7B shape's depth at a width where arithmetic is nearly free: what a step costs the host
    # (Python, dispatch, kernel launches), which a GPU's short steps wait on
    "host": (64, 128, 24, 4, 4),
}


def shaped_model(shape: str, folder: Path) -> str:
    """A random-weight Llama of `shape` saved in `folder` with the built-in SmolLM2 tokenizer."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    from tuneline.models import resolve_model

    builtin = Path(resolve_model("smollm2-135m-instruct").path)
    base = AutoConfig.from_pretrained(builtin).to_dict()
    hidden, inter, layers, heads, kv = SHAPES[shape]
    base.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, head_dim=hidden // heads, torch_dtype="float32")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in base.items() if k not in ("architectures", "model_type")})
                     ).save_pretrained(folder)
    for f in builtin.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy(f, folder / f.name)
    return str(folder)


# -- data: identical rows for both sides --------------------------------------------------------------
def chat_rows(n_train: int, n_eval: int, max_len: int, tok) -> tuple[list, list]:
    """Dolly chats that fit max_len tokens (so no truncation policy differs between the sides)."""
    rows = []
    with open(SHARED / "instructions" / "train.jsonl") as f:
        for line in f:
            r = json.loads(line)
            # count the rendered text's tokens (apply_chat_template(tokenize=True) returns a dict in transformers 5)
            n_tokens = len(tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"])
            if n_tokens <= max_len:
                rows.append(r)
            if len(rows) >= n_train + n_eval:
                break
    return rows[:n_train], rows[n_train:]


def plain_encode(tok, msgs, max_len):
    """How a user masks the prompt: render the prompt with the generation header, train the rest."""
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"][:max_len]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * n_prompt + ids[n_prompt:]}


def heldout_loss(model, tok, rows, max_len) -> float:
    """Mean cross-entropy per assistant token on held-out chats: the same function for both sides."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            e = plain_encode(tok, r["messages"], max_len)
            ids = torch.tensor([e["input_ids"]], device=device)
            labels = torch.tensor([e["labels"]], device=device)
            logits = model(input_ids=ids).logits[0, :-1]
            tgt = labels[0, 1:]
            keep = tgt != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def sst2_rows(n: int) -> tuple[list, list]:
    read = lambda p: [json.loads(l) for l in open(p)]
    return read(SHARED / "sst2" / "train.jsonl")[:n], read(SHARED / "sst2" / "validation.jsonl")


# -- the plain Hugging Face side ---------------------------------------------------------------------
class TokenCount:
    """Counts real and padded tokens of every training batch (a Trainer callback can't see batches)."""

    def __init__(self, collator):
        self.collator, self.real, self.padded = collator, 0, 0

    def __call__(self, features):
        batch = self.collator(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["attention_mask"].numel()
        return batch


def hf_side(args) -> dict:
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments)

    from tuneline.models import resolve_model

    path = resolve_model(args.model).path
    tok = AutoTokenizer.from_pretrained(path)
    gpu = args.device == "cuda"
    targs = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, learning_rate=args.lr,
                 max_steps=args.steps, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                 logging_steps=1, save_strategy="no", report_to=[], seed=args.seed, use_cpu=not gpu, bf16=gpu,
                 disable_tqdm=True, dataloader_num_workers=0)
    if args.job == "lora":
        from datasets import Dataset
        from peft import LoraConfig, get_peft_model

        train, held = chat_rows(args.steps * args.batch, args.eval_rows, args.max_len, tok)
        ds = Dataset.from_list([plain_encode(tok, r["messages"], args.max_len) for r in train])
        if args.qlora:
            from peft import prepare_model_for_kbit_training
            from transformers import BitsAndBytesConfig

            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.bfloat16 if gpu else torch.float32)
            model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant,
                                                         device_map={"": 0} if gpu else "cpu")
            model = prepare_model_for_kbit_training(model)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules=LORA["targets"], task_type="CAUSAL_LM"))
        collator = TokenCount(DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
    else:
        from datasets import Dataset

        train, held = sst2_rows(args.rows)
        labels = sorted({r["label"] for r in train})
        enc = tok([r["text"] for r in train], truncation=True, max_length=args.max_len)
        ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                "labels": [labels.index(r["label"]) for r in train]})
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
        collator = TokenCount(DataCollatorWithPadding(tok, padding="longest"))
    trainer = Trainer(model=model, args=TrainingArguments(**targs), train_dataset=ds, data_collator=collator)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        out = trainer.train()
    except torch.OutOfMemoryError:  # a result: this batch does not fit the plain way
        return {"oom": True, "gpu_peak_bytes": torch.cuda.max_memory_allocated()}
    train_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    res = {"train_seconds": train_s, "real_tokens": collator.real, "computed_tokens": collator.padded,
           "loss_first": losses[0] if losses else None, "loss_mean": sum(losses) / len(losses) if losses else None,
           "loss_last_quarter": _tail_mean(losses), "steps": out.global_step, "peak_rss_train": peak_rss()}
    if gpu:
        res["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    if args.job == "lora":
        res["heldout_loss"] = heldout_loss(trainer.model, tok, held, args.max_len)
    else:
        res["validation_accuracy"] = _accuracy(trainer.model, tok, held, labels, args.max_len)
    return res


def _tail_mean(xs):
    tail = xs[-max(1, len(xs) // 4):]
    return sum(tail) / len(tail) if tail else None


def _accuracy(model, tok, rows, labels, max_len) -> float:
    import torch

    model.eval()
    right = 0
    with torch.no_grad():
        for s in range(0, len(rows), 64):
            part = rows[s:s + 64]
            enc = tok([r["text"] for r in part], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).tolist()
            right += sum(labels[p] == r["label"] for p, r in zip(pred, part))
    return right / len(rows)


# -- the tuneline side ----------------------------------------------------------------------------------
def tuneline_side(args) -> dict:
    import tuneline
    from tuneline.models import load_tokenizer, resolve_model

    path = resolve_model(args.model).path
    tok = load_tokenizer(path)
    tmp = Path(tempfile.mkdtemp())
    if args.job == "lora":
        train, held = chat_rows(args.steps * args.batch, args.eval_rows, args.max_len, tok)
        write = lambda p, rows: p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        write(tmp / "train.jsonl", train)
        write(tmp / "held.jsonl", held)
        recipe = {"task": "generate", "model": args.model, "method": "qlora" if args.qlora else "lora",
                  "data": {"train": str(tmp / "train.jsonl"), "validation": str(tmp / "held.jsonl"),
                           "test": str(tmp / "held.jsonl")},
                  "lora": {"r": LORA["r"], "alpha": LORA["alpha"], "dropout": LORA["dropout"]},
                  "generate": {"max_new_tokens": 1}, "eval": {"max_samples": 1, "forgetting": {"enabled": False}}}
    else:
        train, held = sst2_rows(args.rows)
        (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
        recipe = {"task": "classify", "model": args.model, "method": "full",
                  "data": {"train": str(tmp / "train.jsonl"), "validation": str(SHARED / "sst2" / "validation.jsonl"),
                           "test": str(SHARED / "sst2" / "validation.jsonl")},
                  "eval": {"counterfactuals": False}}
    recipe["train"] = {"max_steps": args.steps, "lr": args.lr, "batch_size": args.batch, "max_length": args.max_len,
                       "warmup_ratio": 0.0, "weight_decay": 0.0, "log_every": 1, "seed": args.seed,
                       "scheduler": "linear", "num_threads": args.threads,  # the same threads as the HF side
                       "precision": args.precision}
    if args.gradient_checkpointing:
        recipe["memory"] = {"gradient_checkpointing": True}
    if args.compile:
        recipe["train"]["compile"] = True
    recipe["output"] = str(tmp / "run")
    from tuneline.recipe import recipe_from_dict

    gpu = args.device == "cuda"
    if args.plain_layers:  # to measure that lever: the loop's swap made a no-op
        from tuneline.training import loop

        loop.lean_activations = lambda model: (0, 0)
    tuneline.train(recipe_from_dict(recipe), force=True, callbacks=[_TrainPeak()])
    manifest = json.loads((tmp / "run" / "run.json").read_text())
    metrics = [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m["type"] == "train"]
    evals = [m for m in metrics if m["type"] == "eval"]
    res = {"train_seconds": manifest["train_seconds"], "real_tokens": manifest["trained_tokens"],
           "computed_tokens": manifest.get("computed_tokens", manifest["trained_tokens"]),
           "loss_first": losses[0], "loss_mean": sum(losses) / len(losses), "loss_last_quarter": _tail_mean(losses),
           "steps": manifest["steps"], "peak_rss_train": _TrainPeak.rss}
    if gpu:
        res["gpu_peak_bytes"] = _TrainPeak.peak
        res["per_step"] = [(m["step"], m["tokens_per_s"]) for m in metrics if m["type"] == "train"]
    if args.job == "lora":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(tmp / "run" / "model")).to(args.device)
        res["heldout_loss"] = heldout_loss(model, tok, held, args.max_len)
    else:
        res["validation_accuracy"] = evals[-1]["accuracy"]
    return res


class _TrainPeak:
    """The training loop's peak GPU memory and the process's peak RSS up to its end (evaluation and the
    report after it excluded)."""

    peak = rss = None

    def on_train_start(self, trainer, state):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer, state):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            _TrainPeak.peak = torch.cuda.max_memory_allocated()
        _TrainPeak.rss = peak_rss()  # the process's peak so far: loading and training, not the finish

    def on_log(self, trainer, record):
        pass

    def on_evaluate(self, trainer, record):
        pass


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = (hf_side if args.side == "hf" else tuneline_side)(args)
    res.update(wall_seconds=time.perf_counter() - t0, peak_rss=peak_rss())
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", choices=["lora", "full"], required=True)
    p.add_argument("--side", choices=["hf", "tuneline"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)  # set by the parent: the built-in or the shaped folder
    p.add_argument("--steps", type=int)
    p.add_argument("--rows", type=int, default=16000, help="full job: SST-2 training rows (one pass)")
    p.add_argument("--eval-rows", type=int, default=16, help="lora job: held-out chats for the loss check")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--gradient-checkpointing", action="store_true", help="tuneline side: recompute activations")
    p.add_argument("--compile", action="store_true", help="tuneline side: train.compile (the first step compiles)")
    p.add_argument("--plain-layers", action="store_true",
                   help="tuneline side: transformers' own norms and MLPs (training/lean_activations.py off)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="tuneline side's train.precision (the plain way: fp32 on a CPU, bf16 on a GPU)")
    p.add_argument("--qlora", action="store_true", help="lora job: both sides with the base in 4 bits (bitsandbytes)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=list(SHAPES), help="lora job: a random-weight Llama of this SmolLM2 size "
                   "instead of the built-in SmolLM2-135M")
    p.add_argument("--batch", type=int, help="rows per step (lora default 8, full 32)")
    p.add_argument("--max-len", type=int, help="lora default 512, full 128")
    args = p.parse_args()
    if args.qlora and args.job != "lora":
        p.error("--qlora is for --job lora")
    if args.job == "lora":
        args.model = args.model or "smollm2-135m-instruct"
        args.batch, args.max_len, args.lr = args.batch or 8, args.max_len or 512, 5e-4
        args.steps = args.steps or 8
    else:
        args.model, args.batch, args.max_len, args.lr = "minilm-l6", args.batch or 32, args.max_len or 128, 1e-4
        args.steps = args.steps or args.rows // args.batch
    if args.side:
        return child(args)
    import torch

    torch.set_num_threads(args.threads)
    if args.shape:  # removed at exit: the 1.7B shape's weights are 6.4 GB
        import atexit
        import shutil

        tmp = tempfile.mkdtemp()
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        args.model = shaped_model(args.shape, Path(tmp) / f"llama-{args.shape}")
    peak = matmul_peak_gflops(args.device)
    results = {}
    for side in ("hf", "tuneline"):
        cmd = [sys.executable, __file__, "--job", args.job, "--side", side, "--steps", str(args.steps),
               "--rows", str(args.rows), "--eval-rows", str(args.eval_rows), "--threads", str(args.threads),
               "--seed", str(args.seed), "--device", args.device, "--model", args.model, "--batch", str(args.batch),
               "--max-len", str(args.max_len)] + (["--gradient-checkpointing"] if args.gradient_checkpointing else []) \
            + (["--compile"] if args.compile else []) + (["--plain-layers"] if args.plain_layers else []) \
            + (["--qlora"] if args.qlora else []) + ["--precision", args.precision]
        print(f"running {side} ...", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[side] = json.loads(line[7:])
    from tuneline.models import resolve_model
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(resolve_model(args.model).path)
    with torch.device("meta"):
        body = AutoModel.from_config(cfg)
    # N counts the weights every token multiplies through: embedding tables are lookups, not
    # matmuls (half of MiniLM's parameters), but a language model's output layer is a matmul
    # (tied to the input table in SmolLM2, so counted once here).
    lookups = sum(p.numel() for m in body.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    n_params = sum(p.numel() for p in body.parameters()) - lookups
    if args.job == "lora":
        n_params += cfg.vocab_size * cfg.hidden_size
    flops_per_token = (4 if args.job == "lora" else 6) * n_params
    gpu = args.device == "cuda"
    for side, r in results.items():
        if r.get("oom"):
            continue
        r["tokens_per_s"] = r["real_tokens"] / r["train_seconds"]
        r["tokens_per_step"] = r["real_tokens"] / max(r["steps"], 1)
        r["padding_share"] = 1 - r["real_tokens"] / r["computed_tokens"]
        r["mfu"] = r["tokens_per_s"] * flops_per_token / (peak * 1e9)
        if gpu:
            r["mfu_nominal"] = r["tokens_per_s"] * flops_per_token / (NOMINAL_GPU_TFLOPS * 1e12)
            r["gpu_peak_gib"] = r["gpu_peak_bytes"] / 2 ** 30
    h, t = results["hf"], results["tuneline"]
    quality = "heldout_loss" if args.job == "lora" else "validation_accuracy"
    where = (f"{args.device}, bf16 matmul peak {peak / 1000:.0f} TFLOP/s" if gpu else
             f"{args.threads} threads, fp32 matmul peak {peak:.0f} GFLOP/s")
    job = args.job + (" (qlora)" if args.qlora else "")
    print(f"\njob {job}: {Path(args.model).name}, {args.steps} steps of batch {args.batch}, max length "
          f"{args.max_len}, {where}; N = {n_params / 1e6:.1f} M parameters in matmuls\n")
    if h.get("oom"):
        print(f"plain HF: out of memory at {h['gpu_peak_bytes'] / 2**30:.1f} GiB\n")
    fmt = "{:<26}{:>16}{:>16}{:>10}"
    print(fmt.format("", "plain HF", "tuneline", "ratio"))
    lines = [("tokens_per_s", "trained tokens/s", "{:.1f}"), ("tokens_per_step", "trained tokens/step", "{:.0f}"),
             ("train_seconds", "train seconds", "{:.1f}"), ("wall_seconds", "wall seconds (process)", "{:.1f}"),
             ("peak_rss_train", "peak RSS, training (GiB)", "{:.2f}"),
             ("peak_rss", "peak RSS, process (GiB)", "{:.2f}"),
             ("padding_share", "padding share", "{:.1%}"),
             ("loss_mean", "mean training loss", "{:.4f}"), ("loss_last_quarter", "loss, last quarter", "{:.4f}"),
             (quality, quality.replace("_", " "), "{:.4f}"), ("mfu", "share of matmul peak", "{:.1%}")]
    if gpu:
        lines += [("mfu_nominal", f"MFU of {NOMINAL_GPU_TFLOPS} TFLOP/s", "{:.1%}"),
                  ("gpu_peak_gib", "peak GPU memory (GiB)", "{:.2f}")]
    for key, label, f in lines:
        hv, tv = h.get(key), t.get(key)
        if key.startswith("peak_rss"):
            hv, tv = (None if v is None else v / 2 ** 30 for v in (hv, tv))
        hs, ts = ("-" if v is None else f.format(v) for v in (hv, tv))
        ratio = f"{tv / hv:.2f}x" if hv and tv is not None else "-"
        print(fmt.format(label, hs, ts, ratio))
    if gpu and t.get("per_step"):  # what the issue reads MFU against: tokens per step
        per = [f"{rate * flops_per_token / (NOMINAL_GPU_TFLOPS * 1e12):.1%}" for _, rate in t["per_step"] if rate]
        print("\ntuneline MFU per logged step (of the nominal peak): " + " ".join(per))
    print("\nRESULTS " + json.dumps({"job": args.job, "peak_gflops": peak, "n_params": n_params, **results}))


if __name__ == "__main__":
    main()
