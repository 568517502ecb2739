"""What every HTML page of tuneline shares: the style sheet, escaping, embedded plots, signed
differences coloured by whether they are better, and tolerant reads of a run folder's files."""

from __future__ import annotations

import html
import json

from ..evaluation.direction import LOWER_IS_BETTER

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1020px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:4px 10px;"
         "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}.muted{color:#777}"
         ".good{color:#11703a}.bad{color:#b42318}.box{background:#f7f7f9;border-left:4px solid #4a6ee0;"
         "padding:.6em 1em;margin:1em 0}pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:13px}"
         "nav a{margin-right:.8em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}")

NOT_A_SCORE = {"length_ratio"}  # best near 1: neither direction is better


def esc(x) -> str:
    return html.escape(str(x))


def img(b64: str | None, alt: str, style: str = "") -> str:
    if not b64:
        return ""
    return f"<img alt='{esc(alt)}' style='{style}' src='data:image/png;base64,{b64}'>"


def signed(v, metric: str) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    better = (v < 0) if metric in LOWER_IS_BETTER else (v > 0)
    cls = "muted" if metric in NOT_A_SCORE or v == 0 else ("good" if better else "bad")
    return f"<span class='{cls}'>{v:+.4f}</span>"


def read_json(path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def read_jsonl(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
