"""The one training loop: AdamW, warm-up schedule, accumulation, clipping, precision,
periodic evaluation, early stopping, best-checkpoint tracking and exact resume."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import distributed, faults, sharding
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, save_weights
from ..data.batching import epoch_batches, split_by_tokens
from .fast_dropout import use_fast_dropout
from .guard import DivergenceGuard
from .neftune import enable_neftune
from ..runs import RunDir


@dataclass
class Plan:
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def make_plan(n_rows: int, tc) -> Plan:
    micro = math.ceil(n_rows / tc.batch_size)
    per_epoch = math.ceil(micro / tc.grad_accum)
    total = tc.max_steps or max(1, math.ceil(tc.epochs * per_epoch))
    return Plan(micro, per_epoch, total, int(round(tc.warmup_ratio * total)))


def build_optimizer(model: torch.nn.Module, tc) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            # biases and norm weights are not decayed (standard practice, as in HF Trainer)
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        # The fused kernel is ~7x faster than the default on CPU (measured: 11 ms vs 82 ms per step for 22M params).
        return torch.optim.AdamW(groups, lr=tc.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=tc.lr)


def build_scheduler(optimizer, tc, plan: Plan):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[tc.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps)


class Callback:
    """Hooks into the loop (trackers, search pruners, alarms). Override what you need.
    `on_evaluate` may raise to stop the run (e.g. a pruned search trial); the loop does not catch it."""

    def on_train_start(self, trainer: "Trainer", state: dict) -> None: ...

    def on_log(self, trainer: "Trainer", record: dict) -> None: ...

    def on_evaluate(self, trainer: "Trainer", record: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer", state: dict) -> None: ...


class Trainer:
    def __init__(self, *, model, task, train_data, val_data, labels, recipe, run: RunDir, pad_id: int, accelerator,
                 callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])
        self.model, self.task, self.train_data, self.val_data = model, task, train_data, val_data
        self.labels, self.recipe, self.run, self.pad_id = labels, recipe, run, pad_id
        self.acc = accelerator
        self.tc = recipe.train
        self.plan = make_plan(len(train_data), self.tc)
        es = self.tc.early_stopping
        self.watch = es.metric if es else task.default_metric
        self.mode = es.resolved_mode() if es else ("min" if self.watch in ("loss", "perplexity") else "max")
        self.main = distributed.is_main()
        if self.acc.device.type == "cpu":
            use_fast_dropout(self.model)
        if self.tc.neftune_alpha:
            enable_neftune(self.model, self.tc.neftune_alpha)
        # fsdp needs more than one process; with one it is plain training
        self.sharded = self.tc.sharding == "fsdp" and distributed.active()
        self.root = None  # the FSDP root module: every forward computation goes through it
        if self.sharded:
            # FSDP moves each unit to the device as it shards it: the whole model never sits there at once
            self.root, units = sharding.shard(self.model, self.acc.device, distributed.world()[1])
            print(f"FSDP: {units} block units + root, sharded over {distributed.world()[1]} processes", flush=True)
        elif distributed.active():
            # gradients are averaged by hand (see distributed.py), so no DDP wrapper
            self.model = self.model.to(self.acc.device)
        # after sharding: the optimizer must hold the sharded parameters
        self.optimizer = build_optimizer(self.model, self.tc)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.plan)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not distributed.active():
            self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        self.eval_batch = self.tc.eval_batch_size or self.tc.batch_size * 2
        self.budget = recipe.memory.token_budget(self.acc.device.type)
        self.guard = DivergenceGuard(self.tc.divergence, run, self.tc.lr, self.tc.max_grad_norm)

    # ------------------------------------------------------------------
    def _pieces(self, rows: list[int], lengths) -> list[tuple[dict, float]]:
        """A batch as (micro-batch, share of its loss) pairs under memory.micro_batch_tokens. The
        shares are each piece's part of the loss's terms (answer tokens, rows), so the summed
        gradients equal the whole batch's."""
        pieces = [self.task.collate(self.train_data, p, self.pad_id) for p in split_by_tokens(rows, lengths, self.budget)]
        items = [self.task.loss_items(b) for b in pieces]
        total = sum(items)
        out = [(b, k / total) for b, k in zip(pieces, items) if k] if total else [(pieces[0], 0.0)]
        if self.sharded:
            # FSDP gathers weights in every forward: all ranks must run as many; extra ones count nothing
            out += [(out[0][0], 0.0)] * (distributed.all_max(len(out)) - len(out))
        return out

    def _run(self, fn):
        """fn(model), through the FSDP root when sharded (its hooks gather the weights)."""
        return self.root(fn) if self.root is not None else fn(self.model)

    def evaluate(self) -> dict:
        return self._run(lambda m: self.task.evaluate(m, self.val_data, self.labels, self.pad_id, self.eval_batch,
                                                      self.acc.device))

    def _save_weights(self, folder) -> None:
        if self.main or self.sharded:  # sharded: every rank helps gather, rank 0 writes
            save_weights(self.model, folder, write=self.main)

    def _save_checkpoint(self, state: dict) -> None:
        if self.main or self.sharded:
            save_checkpoint(self.run.last_ckpt, self.model, self.optimizer, self.scheduler, state, write=self.main)

    def _improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        delta = self.tc.early_stopping.min_delta if self.tc.early_stopping else 0.0
        return value < best - delta if self.mode == "min" else value > best + delta

    def run_loop(self, resume: bool = False) -> dict:
        tc, plan, run = self.tc, self.plan, self.run
        state = {"metric": self.watch, "step": 0, "epoch": 0, "micro": 0, "best": None, "best_step": None, "bad_evals": 0,
                 "tokens": 0, "computed_tokens": 0, "train_seconds": 0.0, "stopped_early": False}
        if resume:
            ckpt = find_checkpoint(run.last_ckpt)
            if ckpt is not None:
                state.update(load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler))
                print(f"Resuming from step {state['step']} of {plan.total_steps}.", flush=True)
            else:
                print("No checkpoint to resume from yet: starting from step 0.", flush=True)
            if self.main:
                run.truncate_metrics_after(state["step"])
        tty = sys.stderr.isatty()
        bar = tqdm(total=plan.total_steps, initial=state["step"], desc="train", unit="step", disable=not tty,
                   dynamic_ncols=True)
        lengths = self.train_data.lengths
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self, state)
        log_loss, log_n, log_tokens, log_t0 = 0.0, 0, 0, time.perf_counter()
        done = state["step"] >= plan.total_steps
        while not done:
            batches = epoch_batches(lengths, tc.batch_size, tc.seed * 1000 + state["epoch"], tc.group_by_length)
            n = len(batches)
            for start in range(state["micro"], n, tc.grad_accum):
                t0 = time.perf_counter()
                end = min(start + tc.grad_accum, n)
                step_loss, grad_norm = 0.0, None
                for bi in range(start, end):
                    rows, weight = distributed.shard(batches[bi]) if distributed.active() else (batches[bi], 1.0)
                    real = computed = 0
                    for batch, share in self._pieces(rows, lengths):
                        batch = {k: v.to(self.acc.device) for k, v in batch.items()}
                        with self.acc.autocast():
                            loss = self._run(lambda m: self.task.loss(m, batch)) * (weight * share)
                        self.guard.check_loss(loss.item() / share if share else 0.0, state["step"] + 1, state)
                        self.acc.backward(loss / (end - start))
                        step_loss += loss.item() / (end - start)
                        if weight and share:
                            real += int(batch["attention_mask"].sum())
                            computed += batch["attention_mask"].numel()
                    if distributed.active():
                        real, computed = (int(v) for v in distributed.all_sum([real, computed]))
                    state["tokens"] += real
                    state["computed_tokens"] = state.get("computed_tokens", 0) + computed
                    log_tokens += real
                if distributed.active():
                    if not self.sharded:  # FSDP has reduce-scattered and averaged them already
                        distributed.average_gradients(self.trainable)
                    step_loss = distributed.all_sum([step_loss])[0] / distributed.world()[1]
                if tc.max_grad_norm or self.guard.watches_gradients:
                    # max_norm inf: the norm without clipping, for the guard; after the all-reduce,
                    # so every process sees the same norm and stops at the same step
                    max_norm = tc.max_grad_norm or math.inf
                    if self.sharded:  # the global norm over every rank's shards
                        grad_norm = sharding.clip_grad_norm(self.trainable, max_norm)
                    else:
                        grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), max_norm))
                    self.guard.check_grad_norm(grad_norm, state["step"] + 1, state)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["micro"] = end
                state["train_seconds"] += time.perf_counter() - t0
                log_loss += step_loss
                log_n += 1
                step = state["step"]
                self.guard.observe(step_loss, step, state)
                epoch_done = end >= n
                if epoch_done:
                    state["epoch"] += 1
                    state["micro"] = 0
                epoch_f = round(step / plan.steps_per_epoch, 4)
                lr = self.scheduler.get_last_lr()[0]
                bar.update(1)
                if step % tc.log_every == 0 or step == plan.total_steps:
                    dt = time.perf_counter() - log_t0
                    rec = {"type": "train", "step": step, "epoch": epoch_f, "loss": round(log_loss / log_n, 6),
                           "lr": lr, "tokens_per_s": round(log_tokens / dt, 1) if dt > 0 else None}
                    if grad_norm is not None:
                        rec["grad_norm"] = round(grad_norm, 6)
                    if self.main:
                        run.log_metrics(rec)
                        for cb in self.callbacks:
                            cb.on_log(self, rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}", tok_s=rec["tokens_per_s"])
                    if not tty:
                        print(f"step {step}/{plan.total_steps} epoch {epoch_f:.2f} loss {rec['loss']:.4f} "
                              f"lr {lr:.2e} {rec['tokens_per_s']} tok/s", flush=True)
                    log_loss, log_n, log_tokens, log_t0 = 0.0, 0, 0, time.perf_counter()
                last = step >= plan.total_steps
                do_eval = epoch_done or last or (tc.eval_every is not None and step % tc.eval_every == 0)
                if do_eval:
                    m = self.evaluate()
                    value = m.get(self.watch)
                    rec = {"type": "eval", "split": "validation", "step": step, "epoch": epoch_f,
                           **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
                    if self.main:
                        run.log_metrics(rec)
                    self.guard.check_eval(rec, state)
                    if self.main:
                        for cb in self.callbacks:
                            cb.on_evaluate(self, rec)
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k in self.task.metric_names)
                    tqdm.write(f"[eval step {step}] {shown}") if tty else print(f"[eval step {step}] {shown}", flush=True)
                    if self._improved(value, state["best"]):
                        state.update(best=value, best_step=step, bad_evals=0)
                        self._save_weights(run.best_ckpt)
                    else:
                        state["bad_evals"] += 1
                        es = tc.early_stopping
                        if es and state["bad_evals"] >= es.patience:
                            state["stopped_early"] = True
                            print(f"Early stopping at step {step}: validation {self.watch} has not improved "
                                  f"for {es.patience} evaluations (best {state['best']:.4f} at step "
                                  f"{state['best_step']}).", flush=True)
                            last = True
                    self.model.train()
                do_save = (step % tc.save_every == 0) if tc.save_every else do_eval
                if do_save and not last:
                    self._save_checkpoint(state)
                if faults.stop_requested():  # Ctrl-C: stop at this step boundary, resumable exactly
                    bar.close()
                    if not (do_save and not last):  # not saved at this step yet
                        self._save_checkpoint(state)
                    raise faults.Interrupted(state["step"])
                if last:
                    done = True
                    break
        bar.close()
        for cb in self.callbacks:
            cb.on_train_end(self, state)
        return state
