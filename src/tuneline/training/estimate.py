"""`tuneline train RECIPE --dry-run`: the plan and its cost before any time is spent.

Time is measured, not modelled: two micro-steps (forward, backward, optimizer) on real rows of
the training set give this machine's tokens/s for this model and method, which the plan's token
count turns into a training time. Memory: the resident size after loading, plus the step's
growth scaled from the probe batch to the recipe's batch, plus optimizer state.
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np
import psutil
import torch

GIB = 1024 ** 3


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def probe_step(task, model, data, recipe, pad_id: int, rows: int) -> dict:
    """Time micro-steps on `rows` rows of the 90th-percentile length (a realistic worst-ish batch)."""
    from .loop import build_optimizer

    lengths = np.asarray(data.lengths)
    order = np.argsort(lengths)
    p90 = int(order[min(len(order) - 1, int(0.9 * len(order)))])
    near = order[max(0, np.searchsorted(lengths[order], lengths[p90]) - rows + 1):][:rows].tolist() or [p90]
    optimizer = build_optimizer(model, recipe.train)
    model.train()
    rss_before = psutil.Process().memory_info().rss
    times, tokens = [], 0
    for i in range(2):  # the first step pays one-time allocation and kernel selection
        batch = task.collate(data, near, pad_id)
        t0 = time.perf_counter()
        loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens = int(batch["attention_mask"].sum())
    return {"rows": len(near), "tokens": tokens, "seconds": times[-1], "tokens_per_s": tokens / times[-1],
            "rss_before": rss_before, "peak": max(_max_rss(), psutil.Process().memory_info().rss)}


def dry_run(recipe, task, source, tokenizer, prepared) -> dict:
    from .. import hardware
    from .fast_dropout import use_fast_dropout
    from .loop import make_plan
    from .methods import apply_method, count_parameters

    torch.manual_seed(recipe.train.seed)
    tc = recipe.train
    plan = make_plan(len(prepared.train), tc)
    model = apply_method(task.load_model(source.path, recipe, tokenizer, prepared.labels), recipe, task)
    trainable, total = count_parameters(model)
    if hardware.device_type() == "cpu":
        use_fast_dropout(model)  # as the training loop does
    probe = probe_step(task, model, prepared.train, recipe, tokenizer.pad_token_id, rows=min(tc.batch_size, 2))
    lengths = np.asarray(prepared.train.lengths)  # numpy already when the rows are streamed
    # activations live for one piece of memory.micro_batch_tokens at a time, not the whole batch
    budget = recipe.memory.token_budget(hardware.device_type())
    width = max(1, probe["tokens"] // probe["rows"])
    live_rows = tc.batch_size if budget is None else min(tc.batch_size, max(1, budget // width))
    epoch_tokens = int(lengths.sum())
    epochs = plan.total_steps / plan.steps_per_epoch
    train_tokens = epoch_tokens * epochs
    train_s = train_tokens / probe["tokens_per_s"]
    # validation passes: forward only, about a third of a training step per token
    n_evals = math.ceil(epochs) + (plan.total_steps // tc.eval_every if tc.eval_every else 0)
    eval_s = n_evals * int(np.sum(prepared.validation.lengths)) / probe["tokens_per_s"] / 3
    step_growth = max(0, probe["peak"] - probe["rss_before"])
    peak = probe["rss_before"] + step_growth * live_rows / probe["rows"] + trainable * 8  # + Adam's two moments
    return {
        "rows": {"train": len(prepared.train), "validation": len(prepared.validation), "test": len(prepared.test)},
        "train_tokens_per_epoch": epoch_tokens, "mean_length": epoch_tokens / max(len(lengths), 1),
        "max_length": int(lengths.max()) if len(lengths) else 0, "epochs": round(epochs, 3), "steps": plan.total_steps,
        "steps_per_epoch": plan.steps_per_epoch, "trainable": trainable, "total": total,
        "probe": {k: probe[k] for k in ("rows", "tokens", "seconds", "tokens_per_s")},
        "estimated_train_seconds": round(train_s, 1), "estimated_eval_seconds": round(eval_s, 1),
        "estimated_peak_bytes": int(peak), "available_bytes": psutil.virtual_memory().available,
        "rows_per_forward": live_rows,
    }


def format_plan(p: dict, recipe, precision: str, where: str) -> str:
    tc = recipe.train
    r = p["rows"]
    lines = [
        "Plan (dry run: nothing trained, nothing written)",
        f"  data       {r['train']:,} train / {r['validation']:,} validation / {r['test']:,} test rows; "
        f"{p['train_tokens_per_epoch']:,} train tokens per epoch (mean {p['mean_length']:.0f}, max {p['max_length']})",
        f"  model      {recipe.model}, method {recipe.method}: trainable {p['trainable']:,} of {p['total']:,} "
        f"({100 * p['trainable'] / max(p['total'], 1):.2f} %)",
        f"  steps      {p['steps']:,} ({p['steps_per_epoch']:,} per epoch, {p['epochs']} epochs), batch "
        f"{tc.batch_size} x {tc.grad_accum} accumulation, lr {tc.lr:g}"
        + (f"; ~{p['rows_per_forward']} rows per forward (memory.micro_batch_tokens)"
           if p.get("rows_per_forward", tc.batch_size) < tc.batch_size else ""),
        f"  precision  {precision} on {where}",
        f"  measured   {p['probe']['tokens_per_s']:,.0f} trained tokens/s ({p['probe']['rows']} rows, "
        f"{p['probe']['tokens']} tokens in {p['probe']['seconds']:.2f} s)",
        f"  estimate   training ~{_duration(p['estimated_train_seconds'])}, validation ~"
        f"{_duration(p['estimated_eval_seconds'])}; peak memory ~{p['estimated_peak_bytes'] / GIB:.1f} GiB "
        f"({p['available_bytes'] / GIB:.1f} GiB available)",
    ]
    if p["estimated_peak_bytes"] > p["available_bytes"]:
        lines.append("  warning    the estimate exceeds the free memory: lower memory.micro_batch_tokens or "
                     "train.max_length, set memory.gradient_checkpointing: true, or use method lora")
    return "\n".join(lines)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
