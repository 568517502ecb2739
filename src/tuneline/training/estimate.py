"""`tuneline train RECIPE --dry-run`: the plan and its cost before any time is spent.

Time is measured, not modelled, on a piece of work the training loop will really do: the epoch's
batches are laid out as the loop lays them out (length grouping, pieces under
memory.micro_batch_tokens), and the piece of median size is timed on this machine's device, at
the run's precision, after a warm-up step that pays the one-time costs (allocation, optimizer
state, kernel selection). Forward + backward time per padded token, times the padded tokens of
every piece of the run, plus the optimizer's time per step, gives the training time; the forward
time per padded token, times the padded tokens of the validation set at the evaluation batch size,
times the number of evaluations, the validation time. Memory: the resident size after loading,
plus the step's growth scaled from the probe piece to the rows that live at once, plus optimizer state.
"""

from __future__ import annotations

import contextlib
import resource
import time

import numpy as np
import psutil
import torch

GIB = 1024 ** 3
SAMPLED_BATCHES = 5000  # the layout of a larger epoch is read from this many of its batches


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def padded_tokens(rows: list[int], lengths, packed_to: int | None = None) -> int:
    """Tokens a piece computes: its rows padded to the longest (the collators pad to the batch's
    longest), or, packed into sequences of `packed_to` tokens, those sequences padded to the longest."""
    if not rows:
        return 0
    if packed_to:
        from ..data.batching import pack_rows

        bins = pack_rows(rows, lengths, packed_to)
        return len(bins) * max(sum(int(lengths[i]) for i in b) for b in bins)
    return len(rows) * max(int(lengths[i]) for i in rows)


def epoch_layout(lengths, tc, budget: int | None) -> tuple[list[list[int]], float]:
    """The pieces of the first epoch's batches as the loop forms them (a sample of a large epoch)
    and the factor from the sample to the whole epoch."""
    from ..data.batching import split_by_tokens, train_batches

    batches = train_batches(lengths, tc, 0)
    sample = batches[:SAMPLED_BATCHES]  # already in random order
    pieces = [p for b in sample for p in split_by_tokens(b, lengths, budget)]
    return pieces, len(batches) / max(len(sample), 1)


def typical_piece(pieces: list[list[int]], lengths, packed_to: int | None = None) -> list[int]:
    """The piece of median padded size: the work of a typical step, not the longest rows."""
    if not pieces:
        return [0]
    sizes = [padded_tokens(p, lengths, packed_to) for p in pieces]
    return pieces[sorted(range(len(pieces)), key=sizes.__getitem__)[len(pieces) // 2]]


def evaluations(plan, eval_every: int | None) -> int:
    """How many validation passes the loop makes: every eval_every steps, at each epoch's end and
    after the last step, each step once."""
    total, per_epoch = plan.total_steps, max(plan.steps_per_epoch, 1)
    steps = set(range(per_epoch, total + 1, per_epoch)) | {total}
    if eval_every:
        steps |= set(range(eval_every, total + 1, eval_every))
    return len(steps) if total else 0


def _autocast(device: torch.device, precision: str):
    """The loop's mixed precision (Accelerate's autocast) for the probe."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_step(task, model, data, recipe, pad_id: int, piece: list[int], device: torch.device,
               precision: str, packed_to: int | None = None) -> dict:
    """Time one training step on `piece` (rows of the training split) after a warm-up step on a
    few of its rows: forward, backward and the optimizer step (with clipping) separately; the rows
    packed into sequences of `packed_to` tokens when the loop packs them."""
    from ..data.batching import pack_rows
    from .loop import build_optimizer

    lengths = data.lengths
    optimizer = build_optimizer(model, recipe.train)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    rss_before = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = sorted(piece, key=lambda i: int(lengths[i]))[:max(1, len(piece) // 4)]
    for rows in (warm, piece):  # the warm-up pays one-time allocation, optimizer state, kernel selection
        cpu_batch = task.collate_packed(data, pack_rows(rows, lengths, packed_to), pad_id) if packed_to else \
            task.collate(data, rows, pad_id)
        batch = {k: v.to(device) for k, v in cpu_batch.items()}
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(device, precision):
            loss = task.loss(model, batch)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        if recipe.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, recipe.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
    tokens = sum(int(lengths[i]) for i in piece) if packed_to else int(batch["attention_mask"].sum())
    out = {"rows": len(piece), "tokens": tokens, "padded": padded_tokens(piece, lengths, packed_to), "seconds": t3 - t0,
           "forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2, "tokens_per_s": tokens / (t3 - t0),
           "rss_before": rss_before, "peak": max(_max_rss(), psutil.Process().memory_info().rss)}
    if device.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    del optimizer, loss, batch
    return out


def _plan_checkpointing(recipe, task, model, data, pad_id, pieces, packed_to, device, precision,
                        trainable: int) -> tuple[int, str]:
    """The loop's memory.gradient_checkpointing plan (training/checkpointing.py), applied to the model."""
    from ..data.batching import pack_rows, split_by_tokens
    from . import checkpointing

    if not recipe.memory.may_checkpoint(device.type):
        return 0, ""
    lengths = data.lengths
    largest = max((padded_tokens(p, lengths, packed_to) for p in pieces), default=0)

    def probe():
        rows = split_by_tokens(pieces[0], lengths, checkpointing.PROBE_TOKENS)[0]
        cpu = task.collate_packed(data, pack_rows(rows, lengths, packed_to), pad_id) if packed_to else \
            task.collate(data, rows, pad_id)
        batch = {k: v.to(device) for k, v in cpu.items()}
        model.train()

        def run_loss():
            with _autocast(device, precision):
                return task.loss(model, batch)

        return run_loss, padded_tokens(rows, lengths, packed_to)

    k, line = checkpointing.plan(recipe.memory, model, device, probe, largest, 12 * trainable)
    checkpointing.set_checkpointed(model, k)
    return k, line


def dry_run(recipe, task, source, tokenizer, prepared) -> dict:
    from .. import hardware
    from ..data.batching import sorted_batches
    from ..recipe import eval_batch_size
    from .loop import make_plan, swap_training_layers
    from .methods import apply_method, count_parameters

    torch.manual_seed(recipe.train.seed)
    tc = recipe.train
    plan = make_plan(len(prepared.train), tc, prepared.train.lengths)
    device = torch.device("cuda" if hardware.device_type() == "cuda" else "cpu")
    precision = hardware.resolve_precision(tc.precision)
    model = apply_method(task.load_model(source.path, recipe, tokenizer, prepared.labels), recipe, task)
    trainable, total = count_parameters(model)
    swap_training_layers(model, device.type, tc.compile)  # as the loop does (the probe runs eager either way)
    cuda_before = 0
    from .frozen_precision import cast_frozen, frozen_dtype
    from .methods import get_method

    half = frozen_dtype(precision, get_method(recipe.method).adapter, sharded=False)
    if half is not None:  # as the loop keeps them
        cast_frozen(model, half)
    if device.type == "cuda":
        model.to(device)  # the loop trains there (Accelerate moves it)
        cuda_before = torch.cuda.memory_allocated(device)
    lengths = np.asarray(prepared.train.lengths)  # numpy already when the rows are streamed
    budget = recipe.memory.token_budget(device.type)
    pieces, scale = epoch_layout(lengths, tc, budget)
    packed_to = tc.max_length if recipe.memory.packs(device.type) and task.packs(model) else None
    checkpointed, ckpt_line = _plan_checkpointing(recipe, task, model, prepared.train, tokenizer.pad_token_id, pieces,
                                                  packed_to, device, precision, trainable)
    probe = probe_step(task, model, prepared.train, recipe, tokenizer.pad_token_id,
                       typical_piece(pieces, lengths, packed_to), device, precision, packed_to)
    epochs = plan.total_steps / max(plan.steps_per_epoch, 1)
    epoch_padded = sum(padded_tokens(p, lengths, packed_to) for p in pieces) * scale
    per_token = (probe["forward_s"] + probe["backward_s"]) / max(probe["padded"], 1)
    train_s = epoch_padded * epochs * per_token + plan.total_steps * probe["optimizer_s"]
    # validation: forward passes only, at the evaluation batch size, no micro-batch cut
    val_lengths = np.asarray(prepared.validation.lengths)
    val_padded = sum(padded_tokens(b, val_lengths) for b in sorted_batches(val_lengths, eval_batch_size(recipe)))
    n_evals = evaluations(plan, tc.eval_every)
    eval_s = n_evals * val_padded * probe["forward_s"] / max(probe["padded"], 1)
    # activations live for one piece of memory.micro_batch_tokens at a time, not the whole batch:
    # the probe's growth, scaled from its piece to the largest piece of the layout
    width = max(1, probe["padded"] // max(probe["rows"], 1))
    batch_rows = round(len(lengths) / max(plan.micro_batches_per_epoch, 1)) if tc.batch_tokens else tc.batch_size
    live_rows = batch_rows if budget is None else min(batch_rows, max(1, budget // width))
    largest = max((padded_tokens(p, lengths, packed_to) for p in pieces), default=probe["padded"])
    grow = max(1.0, largest / max(probe["padded"], 1))
    if device.type == "cuda":
        # the probe's peak holds its gradients and Adam's moments already (allocated by the warm-up step)
        peak = cuda_before + max(0, probe["cuda_peak"] - cuda_before) * grow
        available = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
    else:
        step_growth = max(0, probe["peak"] - probe["rss_before"])
        peak = probe["rss_before"] + step_growth * grow + trainable * 8  # + Adam's two moments
        available = psutil.virtual_memory().available
    epoch_tokens = int(lengths.sum())
    return {
        "rows": {"train": len(prepared.train), "validation": len(prepared.validation), "test": len(prepared.test)},
        "train_tokens_per_epoch": epoch_tokens, "padded_tokens_per_epoch": int(epoch_padded),
        "mean_length": epoch_tokens / max(len(lengths), 1),
        "max_length": int(lengths.max()) if len(lengths) else 0, "epochs": round(epochs, 3), "steps": plan.total_steps,
        "steps_per_epoch": plan.steps_per_epoch, "trainable": trainable, "total": total,
        "probe": {k: round(probe[k], 4) if isinstance(probe[k], float) else probe[k]
                  for k in ("rows", "tokens", "padded", "seconds", "forward_s", "backward_s", "optimizer_s",
                            "tokens_per_s")},
        "evaluations": n_evals,
        "estimated_train_seconds": round(train_s, 1), "estimated_eval_seconds": round(eval_s, 1),
        "estimated_peak_bytes": int(peak), "available_bytes": int(available), "memory_on": device.type,
        "rows_per_batch": batch_rows, "rows_per_forward": live_rows, "packed": bool(packed_to),
        "checkpointed_blocks": checkpointed, "checkpointing": ckpt_line,
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
        + (f"of up to {tc.batch_tokens:,} tokens (~{p['rows_per_batch']} rows)" if tc.batch_tokens else
           f"{tc.batch_size}") + f" x {tc.grad_accum} accumulation, lr {tc.lr:g}"
        + (f"; ~{p['rows_per_forward']} rows per forward (memory.micro_batch_tokens)"
           if p.get("rows_per_forward", p["rows_per_batch"]) < p["rows_per_batch"] else "")
        + ("; rows packed end to end (memory.packing)" if p.get("packed") else ""),
        f"  precision  {precision} on {where}",
        *([f"  memory     {p['checkpointing']}"] if p.get("checkpointing") else []),
        f"  measured   {p['probe']['tokens_per_s']:,.0f} trained tokens/s (a typical step after a warm-up: "
        f"{p['probe']['rows']} rows, {p['probe']['tokens']} tokens in {p['probe']['seconds']:.2f} s)",
        f"  estimate   training ~{_duration(p['estimated_train_seconds'])}, validation ~"
        f"{_duration(p['estimated_eval_seconds'])} ({p.get('evaluations', 0)} passes); peak "
        f"{'GPU ' if p.get('memory_on') == 'cuda' else ''}memory ~{p['estimated_peak_bytes'] / GIB:.1f} GiB "
        f"({p['available_bytes'] / GIB:.1f} GiB available)",
    ]
    if p["estimated_peak_bytes"] > p["available_bytes"]:
        lines.append("  warning    the estimate exceeds the free memory: lower memory.micro_batch_tokens or "
                     "train.max_length, set memory.gradient_checkpointing: true, or use method lora (qlora: a 4-bit base)")
    return "\n".join(lines)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
