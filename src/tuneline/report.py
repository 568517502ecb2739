"""The run's HTML report: metrics next to the baseline, loss curves, confusion matrices."""

from __future__ import annotations

import base64
import html
import io
import json

from .runs import RunDir, atomic_write_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def loss_plot(metrics: list[dict]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if m.get("type") == "train" and m.get("loss") is not None]
    val = [(m["step"], m["loss"]) for m in metrics if m.get("type") == "eval" and m.get("loss") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    out = _png(fig)
    plt.close(fig)
    return out


def confusion_plot(confusion: list[list[int]], labels: list[str], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    out = _png(fig)
    plt.close(fig)
    return out


def _metric_rows(result: dict) -> str:
    from .cli_format import HEADLINE, _fmt

    tuned, base = result["tuned"], result["baseline"]
    rows = []
    for k in HEADLINE.get(result["task"], ()):
        if k in tuned or k in base:
            rows.append(f"<tr><td>{k}</td><td>{_fmt(tuned.get(k))}</td><td>{_fmt(base.get(k))}</td></tr>")
    return "\n".join(rows)


def write_report(run: RunDir, manifest: dict, result: dict, extra_sections: tuple[str, ...] = ()) -> None:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tuneline run report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}.muted{color:#777}</style></head><body>",
        f"<h1>Run report: {html.escape(str(run.path.name))}</h1>",
        f"<p>Task <b>{html.escape(manifest.get('task', ''))}</b>, model <b>{html.escape(str(manifest.get('model')))}</b>, "
        f"method <b>{html.escape(str(manifest.get('method')))}</b>, status <b>{html.escape(str(manifest.get('status')))}</b>.</p>",
        f"<p class='muted'>Rows: {html.escape(json.dumps(manifest.get('rows', {})))}; trainable parameters "
        f"{manifest.get('parameters', {}).get('trainable', 0):,} of {manifest.get('parameters', {}).get('total', 0):,}; "
        f"{manifest.get('steps')} steps in {manifest.get('train_seconds')} s "
        f"({manifest.get('tokens_per_second')} trained tokens/s); best validation step {manifest.get('best_step')}.</p>",
        "<h2>Test metrics</h2>",
        f"<table><tr><th>metric</th><th>tuned</th><th>baseline ({html.escape(result['baseline'].get('kind', 'base model'))})</th></tr>",
        _metric_rows(result), "</table>",
    ]
    per_class = result["tuned"].get("per_class")
    if per_class:
        parts.append("<h3>Per class (tuned)</h3><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>")
        for lab, v in per_class.items():
            parts.append(f"<tr><td>{html.escape(lab)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
                         f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>")
        parts.append("</table>")
    audit_file = run.path / "audit.json"
    if audit_file.exists():
        findings = json.loads(audit_file.read_text()).get("findings", [])
        parts.append("<h2>Data audit</h2>")
        if not findings:
            parts.append("<p>No findings.</p>")
        else:
            parts.append("<table><tr><th>severity</th><th>check</th><th>count</th><th>what</th><th>first lines</th></tr>")
            for f in findings:
                lines = ", ".join(f"{e.get('file', '').rsplit('/', 1)[-1]}:{e['line']}" for e in f["examples"][:3] if e.get("line"))
                parts.append(f"<tr><td>{f['severity']}</td><td>{html.escape(f['check'])}</td><td>{f['count']}</td>"
                             f"<td>{html.escape(f['message'])}</td><td>{html.escape(lines)}</td></tr>")
            parts.append("</table>")
    img = loss_plot(run.read_metrics())
    if img:
        parts.append(f"<h2>Loss</h2><img alt='loss curves' src='data:image/png;base64,{img}'>")
    if "confusion" in result["tuned"]:
        parts.append("<h2>Confusion matrices (test)</h2><div>")
        for key, title in (("tuned", "tuned model"), ("baseline", "baseline")):
            cm = result[key].get("confusion")
            if cm:
                parts.append(f"<img alt='confusion {key}' style='max-width:48%' "
                             f"src='data:image/png;base64,{confusion_plot(cm, result['labels'], title)}'>")
        parts.append("</div>")
    samples = result["tuned"].get("samples")
    if samples:
        parts.append("<h2>Samples</h2><table><tr><th>prompt</th><th>reference</th><th>tuned</th><th>baseline</th></tr>")
        for s in samples:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(s.get(k, '')))}</td>"
                                          for k in ("prompt", "reference", "tuned", "baseline")) + "</tr>")
        parts.append("</table>")
    parts.extend(extra_sections)  # e.g. the search summary of the study this run won
    parts.append("</body></html>")
    atomic_write_text(run.report, "\n".join(parts))
