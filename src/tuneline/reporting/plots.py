"""The report's figures (matplotlib, Agg), each returned as base64 PNG for embedding."""

from __future__ import annotations

import base64
import io

from ..evaluation.direction import lower_is_better


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _style(n: int) -> dict:
    """Lines with dots when there are few points: a run of a few steps must not draw an empty plot."""
    return {"marker": "o", "markersize": 4} if n <= 12 else {}


def epoch_steps(metrics: list[dict]) -> list[int]:
    """The steps at which a new epoch began (from the logged epoch fractions)."""
    out, last = [], 0
    for m in metrics:
        if m.get("type") == "train" and m.get("epoch") is not None and int(m["epoch"]) > last:
            last = int(m["epoch"])
            out.append(m["step"])
    return out


def _marks(ax, best_step: int | None, epochs: list[int]) -> None:
    for i, s in enumerate(epochs):
        ax.axvline(s, color="0.8", lw=0.8, ls=":", label="epoch boundary" if i == 0 else None)
    if best_step is not None:
        ax.axvline(best_step, color="tab:red", lw=1.2, ls="--", label=f"kept model (step {best_step})")


def _finish_curves(ax, fig, metrics: list[dict], best_step: int | None, title: str, ylabel: str) -> str:
    """What every curve over optimizer steps has: epoch boundaries, the kept step, title, axes, legend."""
    _marks(ax, best_step, epoch_steps(metrics))
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def loss_plot(metrics: list[dict], best_step: int | None = None) -> str | None:
    train = [(m["step"], m["loss"]) for m in metrics if m.get("type") == "train" and m.get("loss") is not None]
    val = [(m["step"], m["loss"]) for m in metrics if m.get("type") == "eval" and m.get("loss") is not None]
    if not train and not val:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2, **_style(len(train)))
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    return _finish_curves(ax, fig, metrics, best_step, "Loss: training (logged steps) and validation", "loss")


def eval_curves_plot(metrics: list[dict], names: tuple[str, ...], best_step: int | None = None) -> str | None:
    evals = [m for m in metrics if m.get("type") == "eval"]
    keys = [k for k in names if not lower_is_better(k) and any(k in m for m in evals)]
    if not evals or not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k in keys:
        pts = [(m["step"], m[k]) for m in evals if m.get(k) is not None]
        ax.plot(*zip(*pts), "o-", label=f"validation {k}")
    return _finish_curves(ax, fig, metrics, best_step, "Validation metrics (higher is better)", "score")


def train_figures_plot(metrics: list[dict], names: tuple[str, ...], lengths: tuple[str, ...] = (),
                       best_step: int | None = None) -> str | None:
    """A task's own per-step training figures (task.train_figures: a reward objective's mean reward,
    pass rate...) over steps; `lengths` (answer lengths in tokens) on a second panel of their own scale."""
    train = [m for m in metrics if m.get("type") == "train"]
    keys = [k for k in names if any(m.get(k) is not None for m in train)]
    long_keys = [k for k in lengths if any(m.get(k) is not None for m in train)]
    if not keys and not long_keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2 if long_keys else 1, 1, figsize=(7, 5.2 if long_keys else 3.2), sharex=True,
                             squeeze=False)
    for ax, group, ylabel in ((axes[0][0], keys, "score"), (axes[-1][0], long_keys, "tokens")):
        for k in group:
            pts = [(m["step"], m[k]) for m in train if m.get(k) is not None]
            ax.plot(*zip(*pts), label=k, lw=1.3, **_style(len(pts)))
    if long_keys:
        axes[0][0].set_ylabel("score")
        axes[0][0].grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        axes[0][0].set_title("Training figures per logged step")
        return _finish_curves(axes[1][0], fig, metrics, best_step, "", "answer tokens")
    return _finish_curves(axes[0][0], fig, metrics, best_step, "Training figures per logged step", "score")


def lr_plot(metrics: list[dict]) -> str | None:
    pts = [(m["step"], m["lr"]) for m in metrics if m.get("type") == "train" and m.get("lr") is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.plot(*zip(*pts), lw=1.5, color="tab:green", **_style(len(pts)))
    ax.set_title("Learning-rate schedule (logged steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_plot(confusion: list[list[int]], labels: list[str], title: str) -> str:
    import numpy as np

    plt = _plt()
    cm = np.asarray(confusion)
    size = max(3.2, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(labels) <= 15:
        hi = cm.max() / 2 if cm.size else 0
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > hi else "black")
    return _png(fig)


def reliability_plot(cal: dict) -> str | None:
    bins = cal.get("bins") or []
    if not bins:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centers, [b["accuracy"] for b in bins], width=1 / cal["n_bins"] * 0.9, alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="tab:red",
            label="(confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {cal['ece']:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def bars_plot(names: list[str], series: dict[str, list[float]], ylabel: str, title: str = "") -> str:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(names) * len(series) + 2), 3.2))
    x = np.arange(len(names))
    w = 0.8 / max(len(series), 1)
    for k, (label, vals) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * w, vals, w, label=label)
    ax.set_xticks(x, names, rotation=30 if max(map(len, names), default=0) > 8 else 0, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return _png(fig)
