"""The one training loop: AdamW, warm-up schedule, accumulation, clipping, precision,
periodic evaluation, early stopping, best-checkpoint tracking and exact resume.

The loop's state is a plain dict: it is saved as the checkpoint's state.json, handed to the
callbacks and the divergence guard, and returned to the finish (training/finish.py)."""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import checkpointing, distributed, faults, sharding
from .compiling import compile_blocks
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, save_weights
from ..data.batching import pack_rows, split_by_tokens, train_batches
from ..errors import UserError
from ..evaluation import direction
from .fast_dropout import use_fast_dropout
from .frozen_precision import cast_frozen, frozen_dtype
from .lean_activations import lean_activations
from .fused_lora import fuse_lora
from .methods import get_method
from .guard import DivergenceGuard
from .neftune import enable_neftune
from ..recipe import eval_batch_size


@dataclass
class Plan:
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def make_plan(n_rows: int, tc, lengths=None) -> Plan:
    """Steps of the run. With train.batch_tokens the batches are counted from the first epoch's
    layout (`lengths`: the train rows' token counts); later epochs differ by a batch at most."""
    if tc.batch_tokens:
        if lengths is None:
            raise UserError("train.batch_tokens: `tuneline tune` plans its trials from row counts and cannot use "
                            "it yet; remove it and set train.batch_size")
        micro = len(train_batches(lengths, tc, 0))
    else:
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


@dataclass
class _LogWindow:
    """The training figures since the last log line."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    t0: float = field(default_factory=time.perf_counter)


class _Progress:
    """A step bar on a terminal; plain lines when the output goes to a file."""

    def __init__(self, total: int, initial: int):
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not self.tty,
                        dynamic_ncols=True)
        self.initial, self.started = initial, time.monotonic()

    def train_line(self, rec: dict, total: int, extra: dict) -> None:
        """extra: the task's own figures of the window (a reward objective's mean reward...)."""
        shown = {k: f"{v:.3g}" for k, v in extra.items() if isinstance(v, float)}
        self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=rec["tokens_per_s"], **shown)
        if not self.tty:  # a log file or CI: what tqdm's bar would show, as a line
            more = "".join(f" {k} {v}" for k, v in shown.items())
            print(f"step {rec['step']}/{total} epoch {rec['epoch']:.2f} loss {rec['loss']:.4f}{more} "
                  f"lr {rec['lr']:.2e} {rec['tokens_per_s']} tok/s{self._eta(rec['step'], total)}", flush=True)

    def _eta(self, step: int, total: int) -> str:
        """Time left at the pace of the steps so far (evaluations included), as tqdm estimates it."""
        done = step - self.initial
        if done <= 0 or step >= total:
            return ""
        left = (total - step) * (time.monotonic() - self.started) / done
        return f", ETA {int(left // 60)}m{int(left % 60):02d}s"

    def write(self, line: str) -> None:
        tqdm.write(line) if self.tty else print(line, flush=True)


def new_state(metric: str) -> dict:
    """The loop state at step 0 (the keys of a checkpoint's state.json, besides python_random)."""
    return {"metric": metric, "step": 0, "epoch": 0, "micro": 0, "best": None, "best_step": None, "bad_evals": 0,
            "tokens": 0, "computed_tokens": 0, "train_seconds": 0.0, "stopped_early": False}


def swap_training_layers(model, device_type: str, compiled: bool) -> None:
    """The training-only layer swaps, each value-preserving (the loop and the dry run's probe)."""
    lean_activations(model)
    if not compiled:  # compiled blocks get Inductor's fused dropout instead (compiling.py)
        fuse_lora(model)  # each adapter one autograd node, its dropout inside
        if device_type == "cpu":
            use_fast_dropout(model)


class Trainer:
    def __init__(self, ctx, model, accelerator):
        """ctx: the run's RunContext (training/context.py); model: built and given its method."""
        self.callbacks = list(ctx.callbacks)
        self.model, self.task, self.recipe, self.run = model, ctx.task, ctx.recipe, ctx.run
        self.train_data, self.val_data, self.labels = ctx.prepared.train, ctx.prepared.validation, ctx.prepared.labels
        self.tokenizer = ctx.tokenizer
        self.pad_id = ctx.tokenizer.pad_token_id
        self.acc = accelerator
        self.tc = ctx.recipe.train
        self.plan = make_plan(len(self.train_data), self.tc, self.train_data.lengths)
        es = self.tc.early_stopping
        self.watch = es.metric if es else self.task.default_metric
        self.mode = es.resolved_mode() if es else direction.mode(self.watch)
        self.main = distributed.is_main()
        self._place_model()
        self.packing = self._packing()
        # after sharding: the optimizer must hold the sharded parameters
        self.optimizer = build_optimizer(self.model, self.tc)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.plan)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not distributed.active():
            self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        self.eval_batch = eval_batch_size(self.recipe)
        self.budget = self.recipe.memory.token_budget(self.acc.device.type)
        self.guard = DivergenceGuard(self.tc.divergence, self.run, self.tc.lr, self.tc.max_grad_norm,
                                     self.task.loss_falls)
        self._plan_checkpointing()
        self.compiled = compile_blocks(self.model, self.tc.compile, self.sharded)  # after the plan's eager probe

    def _place_model(self) -> None:
        """Training-only model changes, then the model sharded or moved to this process's device."""
        swap_training_layers(self.model, self.acc.device.type, self.tc.compile)
        if self.tc.neftune_alpha:
            enable_neftune(self.model, self.tc.neftune_alpha)
        # fsdp needs more than one process; with one it is plain training
        self.sharded = self.tc.sharding == "fsdp" and distributed.active()
        precision = {"no": "fp32"}.get(self.acc.mixed_precision, self.acc.mixed_precision)
        half = frozen_dtype(precision, get_method(self.recipe.method).adapter, self.sharded)
        if half is not None:
            cast_frozen(self.model, half)
        self.root = None  # the FSDP root module: every forward computation goes through it
        if self.sharded:
            # FSDP moves each unit to the device as it shards it: the whole model never sits there at once
            self.root, units = sharding.shard(self.model, self.acc.device, distributed.world()[1])
            print(f"FSDP: {units} block units + root, sharded over {distributed.world()[1]} processes", flush=True)
        elif distributed.active():
            # gradients are averaged by hand (see distributed.py), so no DDP wrapper
            self.model = self.model.to(self.acc.device)

    def _plan_checkpointing(self) -> None:
        """memory.gradient_checkpointing: how many blocks recompute (training/checkpointing.py)."""
        if not self.recipe.memory.may_checkpoint(self.acc.device.type):
            return
        from .estimate import epoch_layout, padded_tokens

        lengths = self.train_data.lengths
        pieces, _ = epoch_layout(lengths, self.tc, self.budget)
        packed_to = self.tc.max_length if self.packing else None
        largest = max((padded_tokens(p, lengths, packed_to) for p in pieces), default=0)
        pending = 3 * sum(p.numel() * p.element_size() for p in self.trainable)  # gradients + AdamW's moments
        k, line = checkpointing.plan(self.recipe.memory, self.model, self.acc.device, self._probe_piece, largest,
                                     pending, self.sharded)
        if distributed.active():  # every rank recomputes the same blocks: FSDP gathers in step
            k = distributed.all_max(k)
        checkpointing.set_checkpointed(self.model, k)
        if line and self.main:
            print(line, flush=True)

    def _probe_piece(self):
        """(run the loss once, its computed tokens) on a real piece of about PROBE_TOKENS tokens."""
        lengths = self.train_data.lengths
        first = train_batches(lengths, self.tc, 0)[0]
        rows = split_by_tokens(first, lengths, checkpointing.PROBE_TOKENS)[0]
        batch, _, _, computed = self._micro_batches(rows, lengths)[0]
        batch = {k: v.to(self.acc.device) for k, v in batch.items()}
        self.model.train()

        def run_loss():
            # the run's random streams untouched (a grpo loss samples answers), its step figures dropped
            devices = [self.acc.device] if self.acc.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), self.acc.autocast():
                loss = self.run_model(lambda m: self.task.loss(m, batch))
            self.task.train_stats()
            return loss

        return run_loss, max(computed, 1)

    def _packing(self) -> bool:
        """memory.packing for this run: auto packs on a GPU where the task and model can."""
        mem = self.recipe.memory
        if not mem.packs(self.acc.device.type):
            return False
        if self.task.packs(self.model):
            return True
        if mem.packing is True:
            what = f"objective {self.task.objective}" if self.task.objective != "sft" else \
                f"task {self.task.name} on a {getattr(self.model.config, 'model_type', '?')} model"
            raise UserError(f"memory.packing: true: {what} cannot pack rows; set memory.packing: auto or false")
        return False

    # -- helpers ---------------------------------------------------------------
    def _micro_batches(self, rows: list[int], lengths) -> list[tuple[dict, float, int, int]]:
        """A batch as (micro-batch, share of its loss, real tokens, computed tokens) under
        memory.micro_batch_tokens, packed when memory.packing is on. The shares are each piece's
        part of the loss's terms (answer tokens, rows), so the summed gradients equal the whole
        batch's. Token counts come from the CPU tensors: no read-back from the device."""
        pieces = []
        for part in split_by_tokens(rows, lengths, self.budget):
            if self.packing:
                b = self.task.collate_packed(self.train_data, pack_rows(part, lengths, self.tc.max_length), self.pad_id)
                pieces.append((b, sum(int(lengths[i]) for i in part), b["input_ids"].numel()))
            else:
                b = self.task.collate(self.train_data, part, self.pad_id)
                pieces.append((b, int(b["attention_mask"].sum()), b["attention_mask"].numel()))
        items = [self.task.loss_items(b) for b, _, _ in pieces]
        total = sum(items)
        out = [(b, k / total, r, c) for (b, r, c), k in zip(pieces, items) if k] if total else \
            [(pieces[0][0], 0.0, 0, 0)]
        if self.sharded:
            # FSDP gathers weights in every forward: all ranks must run as many; extra ones count nothing
            out += [(out[0][0], 0.0, 0, 0)] * (distributed.all_max(len(out)) - len(out))
        return out

    def run_model(self, fn):
        """fn(model), through the FSDP root when sharded (its hooks gather the weights)."""
        return self.root(fn) if self.root is not None else fn(self.model)

    def evaluate(self) -> dict:
        # at the run's precision, as training: with frozen weights kept in bf16, autocast is what keeps
        # the log-softmax and the losses in fp32
        with self.compiled.eager() if self.compiled else nullcontext(), self.acc.autocast():
            return self.run_model(lambda m: self.task.evaluate(m, self.val_data, self.labels, self.pad_id,
                                                          self.eval_batch, self.acc.device))

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

    # -- the loop ----------------------------------------------------------------
    def run_loop(self, resume: bool = False) -> dict:
        """Trains to plan.total_steps (or early stopping) and returns the loop state."""
        self.task.before_training(self)  # before a checkpoint is loaded: the model is still the untuned one
        state = self._start_state(resume)
        self._progress = _Progress(self.plan.total_steps, state["step"])
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self, state)
        self._window = _LogWindow()
        done = state["step"] >= self.plan.total_steps
        while not done:
            done = self._train_epoch(state)
        self._progress.bar.close()
        if self.compiled:  # the finish evaluates and generates: plain blocks
            self.compiled.off()
        for cb in self.callbacks:
            cb.on_train_end(self, state)
        return state

    def _start_state(self, resume: bool) -> dict:
        state = new_state(self.watch)
        if not resume:
            return state
        ckpt = find_checkpoint(self.run.last_ckpt)
        if ckpt is not None:
            state.update(load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler))
            print(f"Resuming from step {state['step']} of {self.plan.total_steps}.", flush=True)
        else:
            print("No checkpoint to resume from yet: starting from step 0.", flush=True)
        if self.main:
            self.run.truncate_metrics_after(state["step"])
        return state

    def _train_epoch(self, state: dict) -> bool:
        """The rest of the epoch from state["micro"] (a resumed run starts mid-epoch); True when training ends."""
        tc = self.tc
        # the batches are a pure function of seed and epoch: a resumed run draws the same ones
        batches = train_batches(self.train_data.lengths, tc, state["epoch"])
        for start in range(state["micro"], len(batches), tc.grad_accum):
            end = min(start + tc.grad_accum, len(batches))
            if self._train_step(batches[start:end], state, end, epoch_done=end >= len(batches)):
                return True
        return False

    def _train_step(self, group: list[list[int]], state: dict, end: int, epoch_done: bool) -> bool:
        """One optimizer step over `group` (up to grad_accum batches; `end`: the epoch's next batch),
        then its logging, evaluation and checkpoint. True when training ends (last step or early stopping)."""
        t0 = time.perf_counter()
        step_loss, grad_norm = self._step(group, state)
        state["step"] += 1
        state["micro"] = end
        state["train_seconds"] += time.perf_counter() - t0
        self._window.loss += step_loss
        self._window.steps += 1
        step = state["step"]
        self.guard.observe(step_loss, step, state)
        if epoch_done:
            state["epoch"] += 1
            state["micro"] = 0
        self._progress.bar.update(1)
        if step % self.tc.log_every == 0 or step == self.plan.total_steps:
            self._log(step, grad_norm)
        last = step >= self.plan.total_steps
        evaluated = epoch_done or last or (self.tc.eval_every is not None and step % self.tc.eval_every == 0)
        if evaluated and self._evaluate_and_keep_best(state):
            last = True  # early stopping
        self._checkpoint(state, evaluated, last)
        return last

    # -- one optimizer step ------------------------------------------------------
    def _step(self, group: list[list[int]], state: dict) -> tuple[float, float | None]:
        """Forward and backward over every piece of the group's batches, gradients averaged over
        the processes and clipped, the optimizer step. Returns (mean loss, gradient norm or None)."""
        losses = [self._backward(rows, len(group), state) for rows in group]
        if distributed.active() and not self.sharded:  # FSDP has reduce-scattered and averaged them already
            distributed.average_gradients(self.trainable)
        norm = self._clip()
        # The step's loss and gradient norm are read back once, together, here (each read waits
        # for the GPU). A non-finite one stops the run before the optimizer touches a weight.
        read = torch.stack([torch.stack(losses).sum().float()] + ([norm.float()] if norm is not None else []))
        step_loss, grad_norm = (read.tolist() + [None])[:2]
        if distributed.active():
            step_loss = distributed.all_sum([step_loss])[0] / distributed.world()[1]
        self.guard.check_loss(step_loss, state["step"] + 1, state)
        if grad_norm is not None:
            self.guard.check_grad_norm(grad_norm, state["step"] + 1, state)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm

    def _backward(self, rows: list[int], accum: int, state: dict) -> torch.Tensor:
        """One batch's pieces, forward and backward (this process's share of its rows); counts
        its tokens into the state. Returns the batch's part of the step's mean loss, on the device."""
        rows, weight = distributed.shard(rows) if distributed.active() else (rows, 1.0)
        batch_loss, real, computed = torch.zeros((), device=self.acc.device), 0, 0
        for batch, share, piece_real, piece_computed in self._micro_batches(rows, self.train_data.lengths):
            batch = {k: v.to(self.acc.device, non_blocking=True) for k, v in batch.items()}
            with self.acc.autocast():
                loss = self.run_model(lambda m: self.task.loss(m, batch)) * (weight * share)
            self.acc.backward(loss / accum)
            batch_loss = batch_loss + loss.detach().float() / accum
            if weight and share:
                real += piece_real
                computed += piece_computed
        if distributed.active():
            real, computed = (int(v) for v in distributed.all_sum([real, computed]))
        state["tokens"] += real
        state["computed_tokens"] = state.get("computed_tokens", 0) + computed  # absent in older checkpoints
        self._window.tokens += real
        return batch_loss

    def _clip(self) -> torch.Tensor | None:
        """Clips to max_grad_norm; the norm (on the device) also feeds the divergence guard. None
        when neither asks for it."""
        if not (self.tc.max_grad_norm or self.guard.watches_gradients):
            return None
        # max_norm inf: the norm without clipping, for the guard; after the all-reduce,
        # so every process sees the same norm and stops at the same step
        max_norm = self.tc.max_grad_norm or math.inf
        if self.sharded:  # the global norm over every rank's shards
            return sharding.clip_grad_norm(self.trainable, max_norm)
        # the trainable list, not model.parameters(): walking every frozen weight cost the host ~10 ms a step
        return self.acc.clip_grad_norm_(self.trainable, max_norm)

    # -- after the step ------------------------------------------------------------
    def _epoch(self, step: int) -> float:
        return round(step / self.plan.steps_per_epoch, 4)

    def _log(self, step: int, grad_norm: float | None) -> None:
        w, dt = self._window, time.perf_counter() - self._window.t0
        rec = {"type": "train", "step": step, "epoch": self._epoch(step), "loss": round(w.loss / w.steps, 6),
               "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": round(w.tokens / dt, 1) if dt > 0 else None}
        if grad_norm is not None:
            rec["grad_norm"] = round(grad_norm, 6)
        extra = self.task.train_stats()
        rec.update(extra)
        if self.main:
            self.run.log_metrics(rec)
            for cb in self.callbacks:
                cb.on_log(self, rec)
        self._progress.train_line(rec, self.plan.total_steps, extra)
        self._window = _LogWindow()

    def _evaluate_and_keep_best(self, state: dict) -> bool:
        """Validation metrics logged and shown, the best weights kept; True when early stopping ends the run."""
        step = state["step"]
        m = self.evaluate()
        rec = {"type": "eval", "split": "validation", "step": step, "epoch": self._epoch(step),
               **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
        if self.main:
            self.run.log_metrics(rec)
        self.guard.check_eval(rec, state)
        if self.main:
            for cb in self.callbacks:
                cb.on_evaluate(self, rec)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k in self.task.metric_names)
        self._progress.write(f"[eval step {step}] {shown}")
        stop = self._keep_best(m.get(self.watch), state)
        self.model.train()
        return stop

    def _keep_best(self, value: float, state: dict) -> bool:
        """Saves the weights of a new best; counts evaluations without one. True: stop early."""
        if self._improved(value, state["best"]):
            state.update(best=value, best_step=state["step"], bad_evals=0)
            self._save_weights(self.run.best_ckpt)
            return False
        state["bad_evals"] += 1
        es = self.tc.early_stopping
        if not (es and state["bad_evals"] >= es.patience):
            return False
        state["stopped_early"] = True
        print(f"Early stopping at step {state['step']}: validation {self.watch} has not improved "
              f"for {es.patience} evaluations (best {state['best']:.4f} at step {state['best_step']}).", flush=True)
        return True

    def _checkpoint(self, state: dict, evaluated: bool, last: bool) -> None:
        """The resumable checkpoint (checkpoints/last), at save_every or each evaluation; none at the
        last step, where the finish takes over. On Ctrl-C: saved now, then Interrupted is raised."""
        saved = not last and ((state["step"] % self.tc.save_every == 0) if self.tc.save_every else evaluated)
        if saved:
            self._save_checkpoint(state)
        if faults.stop_requested():  # Ctrl-C: stop at this step boundary, resumable exactly
            self._progress.bar.close()
            if not saved:
                self._save_checkpoint(state)
            raise faults.Interrupted(state["step"])
