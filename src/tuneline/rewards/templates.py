"""`{{item.FIELD}}` and `{{sample.output_text}}` substitution, OpenAI's template syntax.

A small regex, not jinja: a template in a recipe (or in an OpenAI grader definition someone
shares) must never run code, and jinja's expressions, filters and attribute access can.
Here a template only reads a field of the row or of the model's answer.
"""

from __future__ import annotations

import json
import re

from .errors import GraderError

TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
# namespace.path; the path's steps are keys or list indexes: item.refs.0 or item.refs[0]
_BODY = re.compile(r"^\s*([A-Za-z_]\w*)((?:\.[^.\s\[\]{}]+|\[\d+\])*)\s*$")
_STEP = re.compile(r"\.([^.\s\[\]{}]+)|\[(\d+)\]")
SAMPLE_FIELDS = ("output_text", "output_json")
# OpenAI's other sample fields come from its API's answer object; a local answer is text only.
_OPENAI_ONLY = ("output_tools", "choices", "output_audio")


def parse(template: str, where: str) -> list[tuple[str, str, list[str | int]]]:
    """Every `{{ ... }}` of a template as (text, namespace, steps); syntax errors name `where`."""
    found = []
    for m in TEMPLATE.finditer(template):
        body = _BODY.match(m.group(1))
        if not body:
            raise GraderError(f"{where}: template {m.group(0)!r} is not {{{{item.FIELD}}}} or "
                              f"{{{{sample.output_text}}}} (fields nest with dots: item.a.b, item.refs.0)")
        ns = body.group(1)
        # findall gives '' for the group that did not match; a digit step indexes a list
        steps: list[str | int] = [int(k) if k.isdigit() else k for k in
                                  (s or i for s, i in _STEP.findall(body.group(2)))]
        if ns not in ("item", "sample"):
            raise GraderError(f"{where}: template {m.group(0)!r} names namespace {ns!r}; allowed: item (the data "
                              f"row), sample (the model's answer)")
        if ns == "item" and not steps:
            raise GraderError(f"{where}: template {m.group(0)!r} needs a field: {{{{item.FIELD}}}}")
        if ns == "sample":
            field = steps[0] if steps else None
            if field in _OPENAI_ONLY:
                raise GraderError(f"{where}: template {m.group(0)!r}: sample.{field} exists only in OpenAI's API; "
                                  f"locally the answer is text: use sample.output_text or sample.output_json")
            if field not in SAMPLE_FIELDS or (field == "output_text" and len(steps) > 1):
                raise GraderError(f"{where}: template {m.group(0)!r} is not a sample field; allowed: "
                                  f"sample.output_text, sample.output_json, sample.output_json.FIELD")
        found.append((m.group(0), ns, steps))
    return found


def check(template, where: str) -> None:
    if not isinstance(template, str):
        raise GraderError(f"{where}: give a string (it may hold templates such as {{{{item.answer}}}}), "
                          f"not {type(template).__name__}")
    parse(template, where)


def _text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _lookup(value, steps, start: str, text: str, where: str, strict: bool):
    path = start
    for step in steps:
        if isinstance(value, dict) and str(step) in value:
            value = value[str(step)]
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        elif not strict:
            return None  # OpenAI: a missing output_json field is an empty string
        else:
            have = (f"it has the fields: {', '.join(map(str, value)) or '(none)'}" if isinstance(value, dict)
                    else f"it is a list of {len(value)}" if isinstance(value, list)
                    else f"it is a {type(value).__name__}, not an object")
            raise GraderError(f"{where}: template {text} needs {path}.{step}, which this row lacks ({path}: {have})")
        path = f"{path}.{step}"
    return value


def render(template: str, item: dict, sample: dict, where: str) -> str:
    """The template with every `{{ ... }}` replaced; a field missing from the row is an error."""
    def one(m: re.Match) -> str:
        (text, ns, steps), = parse(m.group(0), where)
        if ns == "item":
            return _text(_lookup(item, steps, "item", text, where, strict=True))
        if steps[0] == "output_text":
            return sample["output_text"]
        return _text(_lookup(sample.get("output_json"), steps[1:], "sample.output_json", text, where, strict=False))

    return TEMPLATE.sub(one, template)


def make_sample(output_text: str) -> dict:
    """The `sample` namespace: the answer, and the answer parsed as JSON (None when it is not JSON;
    a ```json fenced block counts, as chat models often wrap JSON that way)."""
    return {"output_text": output_text, "output_json": parse_json(output_text)}


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def parse_json(text: str):
    for candidate in (text, *(m.group(1) for m in _FENCE.finditer(text))):
        try:
            return json.loads(candidate)
        except (ValueError, TypeError):
            continue
    return None
