"""The report sections that belong to a task, by name: a task's `report_sections` names the ones
its report draws (tasks/base.py). A section is `(eval.json object, RunDir) -> HTML blocks`;
a plug-in task adds its own with `SECTIONS["name"] = function`."""

from __future__ import annotations

from typing import Callable

from . import plots
from .page import esc, img, read_jsonl
from ..runs import RunDir


def classes_section(result: dict, run: RunDir) -> list[str]:
    """Per-class figures, confusion matrices, calibration and the most confident errors."""
    tuned, labels = result["tuned"], result.get("labels") or []
    out = []
    per_class = tuned.get("per_class")
    if per_class:
        out.append("<h2 id='per-class'>Per class (tuned)</h2><table><tr><th>label</th><th>precision</th>"
                   "<th>recall</th><th>F1</th><th>support</th></tr>")
        for lab, v in per_class.items():
            out.append(f"<tr><td>{esc(lab)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
                       f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>")
        out.append("</table>")
    out.append("<h2 id='confusion'>Confusion matrices (test)</h2><div>")
    for key, title in (("tuned", "tuned model"), ("baseline", "baseline"), ("zero_shot", "zero-shot base model")):
        cm = (result.get(key) or {}).get("confusion")
        if cm:
            out.append(img(plots.confusion_plot(cm, labels, title), f"confusion {key}", "max-width:32%"))
    out.append("</div>")
    cal = tuned.get("calibration")
    if cal:
        out.append(f"<h2 id='calibration'>Calibration</h2><p>Expected calibration error <b>{cal['ece']:.4f}</b> "
                   f"(mean confidence {cal['mean_confidence']:.3f}, accuracy {cal['accuracy']:.3f}; "
                   f"{cal['n_bins']} equal-width bins). 0 means the confidence can be read as a probability.</p>")
        out.append(img(plots.reliability_plot(cal), "reliability diagram"))
    errors = result.get("most_confident_errors")
    if errors is not None:
        out.append("<h2 id='errors'>Most confident errors</h2>")
        if not errors:
            out.append("<p>No test row was misclassified.</p>")
        else:
            out.append("<table><tr><th>where</th><th>text</th><th>true</th><th>predicted</th><th>confidence</th></tr>")
            for e in errors:
                out.append(f"<tr><td>{esc(e['where'].rsplit('/', 1)[-1])}</td><td>{esc(e['text'])}</td>"
                           f"<td>{esc(e['label'])}</td><td>{esc(e['pred'])}</td><td>{e['confidence']:.3f}</td></tr>")
            out.append("</table>")
    return out


def samples_section(result: dict, run: RunDir) -> list[str]:
    """The first generations next to the reference and the base model's answer."""
    predictions = read_jsonl(run.path / "predictions.jsonl")
    rows = predictions[:10] if predictions else result["tuned"].get("samples") or []
    if not rows:
        return []
    out = ["<h2 id='samples'>Sample generations</h2><table><tr><th>prompt</th><th>reference</th>"
           "<th>tuned</th><th>base model</th></tr>"]
    for s in rows:
        out.append("<tr>" + "".join(f"<td>{esc(s.get(k, ''))}</td>" for k in ("prompt", "reference", "tuned", "baseline"))
                   + "</tr>")
    return out + ["</table>"]


SECTIONS: dict[str, Callable[[dict, RunDir], list[str]]] = {
    "classes": classes_section,
    "samples": samples_section,
}
