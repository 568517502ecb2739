"""The divergence guard: stop a run whose loss or gradients are no longer numbers, or whose
loss climbs far above where it has been, before a broken model is written as a success.

The loop calls it at three points (the step's loss after backward and before the optimizer
step, the step's gradient norm, the step's mean loss for the trend) and at each evaluation. Its
running figures live in the loop state under "guard", so they are checkpointed with it and a
resumed run keeps watching from where it was.
On divergence it records the step in run.json and diagnostics.json and raises RunFailed; the
checkpoints saved before (last and best) are left as they are, and no model is written.
"""

from __future__ import annotations

import json
import math

from ..errors import RunFailed
from ..runs import RunDir, atomic_write_json

# Smoothing of the per-step loss: about the last 10 steps. Single batches are noisy; one bad
# batch should not stop a run, a trend should.
EMA_BETA = 0.9


class DivergenceGuard:
    def __init__(self, cfg, run: RunDir, lr: float, max_grad_norm: float | None, loss_falls: bool = True):
        """loss_falls: the task's training loss is positive and falls as it learns (task.loss_falls);
        otherwise (a policy-gradient loss around zero) only non-finite figures are failures."""
        self.cfg, self.run, self.lr, self.max_grad_norm = cfg, run, lr, max_grad_norm
        self.loss_falls = loss_falls

    @property
    def watches_gradients(self) -> bool:
        return self.cfg.enabled

    # -- the checks ---------------------------------------------------------
    def check_loss(self, loss: float, step: int, state: dict) -> None:
        """The step's loss, before the optimizer step: a non-finite loss can never be trained on."""
        if not math.isfinite(loss):
            self.fail(f"the training loss is {loss}", step, state)

    def check_grad_norm(self, norm: float, step: int, state: dict) -> None:
        """Before the optimizer step: one non-finite gradient would turn every weight into NaN."""
        if self.cfg.enabled and not math.isfinite(norm):
            self.fail(f"the gradient norm is {norm} (the loss was finite)", step, state)

    def observe(self, step_loss: float, step: int, state: dict) -> None:
        """After the step: the smoothed loss against its running minimum and the starting loss."""
        if not (self.cfg.enabled and self.loss_falls):
            return
        g = state.setdefault("guard", {"ema": None, "min_ema": None, "start": None, "steps": 0})
        g["steps"] += 1
        g["ema"] = step_loss if g["ema"] is None else EMA_BETA * g["ema"] + (1 - EMA_BETA) * step_loss
        if g["start"] is None:
            g["start"] = step_loss
        if g["steps"] < self.cfg.min_steps:
            return
        g["min_ema"] = g["ema"] if g["min_ema"] is None else min(g["min_ema"], g["ema"])
        # Both conditions: a ratio alone fires when a converged loss near zero wiggles
        # (0.01 -> 0.04), and a real divergence climbs past where the untrained model started.
        if g["ema"] > self.cfg.loss_ratio * g["min_ema"] and g["ema"] > g["start"]:
            self.fail(f"the smoothed training loss rose to {g['ema']:.4g}, {g['ema'] / g['min_ema']:.1f}x its "
                      f"minimum {g['min_ema']:.4g} and above the starting loss {g['start']:.4g}", step, state)
        # A loss that exploded within the first steps has no lower minimum to compare with.
        if g["ema"] > self.cfg.loss_ratio * g["start"]:
            self.fail(f"the smoothed training loss is {g['ema']:.4g}, {g['ema'] / g['start']:.1f}x the starting "
                      f"loss {g['start']:.4g}", step, state)

    def check_eval(self, record: dict, state: dict) -> None:
        loss = record.get("loss")
        if self.cfg.enabled and loss is not None and not math.isfinite(loss):
            self.fail(f"the validation loss is {loss}", record["step"], state)

    # -- failing cleanly ----------------------------------------------------
    def fail(self, reason: str, step: int, state: dict) -> None:
        kept = self._kept(state)
        advice = self._advice()
        message = (f"training diverged at step {step}: {reason}. No model was written and the run is marked "
                   f"failed; kept: {', '.join(kept) if kept else 'no checkpoint yet'}. {advice}")
        from . import distributed

        if distributed.is_main():  # every process fails at the same step; one writes
            self.run.update_manifest(diverged={"step": step, "reason": reason, "kept": kept})
            atomic_write_json(self.run.path / "diagnostics.json", [{
                "check": "divergence", "severity": "error", "step": step,
                "message": f"training diverged at step {step}: {reason}", "advice": advice,
            }])
        raise RunFailed(message)

    def _kept(self, state: dict) -> list[str]:
        kept = []
        last = self.run.last_ckpt / "state.json"
        if last.exists():
            kept.append(f"checkpoints/last (step {json.loads(last.read_text())['step']})")
        if (self.run.best_ckpt / "trainable.safetensors").exists() and state.get("best_step"):
            kept.append(f"checkpoints/best (step {state['best_step']}, validation {state.get('metric')} "
                        f"{state['best']:.4g})")
        return kept

    def _advice(self) -> str:
        tips = [f"lower train.lr (now {self.lr:g}; try {self.lr / 4:g})", "raise train.warmup_ratio"]
        if not self.max_grad_norm:
            tips.append("set train.max_grad_norm: 1.0")
        tips.append("use precision fp32 if it was bf16/fp16")
        return "Try: " + "; ".join(tips) + "."


def assert_finite(model) -> None:
    """Last line of defence before a model is written: trainable weights must all be numbers."""
    import torch

    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise RunFailed(f"the trained weight {name} holds NaN or infinite values; no model was written "
                            "(lower train.lr or set train.max_grad_norm)")
