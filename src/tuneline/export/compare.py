"""How close an exported model's outputs are to the source model's, as numbers for the manifest."""

from __future__ import annotations

import torch


@torch.no_grad()
def causal_logits(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits of one sequence, fp32, shape (positions, vocab)."""
    x = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().cpu()


class LogitsAgreement:
    """Accumulates source vs exported logits over many positions: worst and mean absolute
    difference, how often the top token agrees, and the mean KL divergence of the next-token
    distributions (source || exported), which is what a sampler sees."""

    def __init__(self):
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.positions = 0
        self.top1_same = 0
        self.kl_sum = 0.0
        self.logit_scale = 0.0

    def add(self, source: torch.Tensor, exported: torch.Tensor) -> None:
        source, exported = source.float(), exported.float()
        diff = (source - exported).abs()
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.values += diff.numel()
        self.positions += source.shape[0]
        self.top1_same += int((source.argmax(-1) == exported.argmax(-1)).sum())
        p = source.log_softmax(-1)
        q = exported.log_softmax(-1)
        self.kl_sum += float((p.exp() * (p - q)).sum(-1).clamp_min(0).sum())
        self.logit_scale = max(self.logit_scale, float(source.abs().max()))

    def result(self) -> dict:
        n = max(self.positions, 1)
        return {
            "positions": self.positions,
            "max_abs_diff": self.max_abs,
            "mean_abs_diff": self.sum_abs / max(self.values, 1),
            "max_abs_logit": self.logit_scale,
            "top1_agreement": self.top1_same / n,
            "mean_kl": self.kl_sum / n,
        }


def within(figures: dict, tolerance: dict) -> bool:
    """True when every figure named in the tolerance is on the right side of it
    (`min_*` keys are lower bounds, the others upper bounds)."""
    for key, limit in tolerance.items():
        if key.startswith("min_"):
            if figures[key[4:]] < limit:
                return False
        elif figures[key] > limit:
            return False
    return True


def prediction_agreement(source_logits: torch.Tensor, exported_logits: torch.Tensor) -> dict:
    """Classifier outputs on the same rows: same predicted label? how far apart are the probabilities?"""
    ps, pe = source_logits.float().softmax(-1), exported_logits.float().softmax(-1)
    same = int((ps.argmax(-1) == pe.argmax(-1)).sum())
    return {
        "rows": int(ps.shape[0]),
        "same_label": same,
        "label_agreement": same / max(int(ps.shape[0]), 1),
        "max_prob_diff": float((ps - pe).abs().max()),
        "max_abs_logit_diff": float((source_logits.float() - exported_logits.float()).abs().max()),
    }
