"""check_specs: grader definitions checked key by key, before anything is loaded.

Imports nothing heavy (no torch, no model, no metric library): a recipe is checked in well
under a second. Every error names the key path (rewards[1].operation) and the allowed values
or keys. OpenAI grader definitions pass unchanged, apart from `trust_code: true`, which a
python grader needs here because it runs on this machine, not in OpenAI's sandbox.
"""

from __future__ import annotations

import ast
import re

from . import templates
from .errors import GraderError
from .formula import Formula

OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
           "rouge_l", "cosine")
ROLES = ("system", "developer", "user", "assistant")
REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
# OpenAI's sampling_params: only max_completions_tokens is used (as the judge's new-token cap);
# the rest are accepted and ignored, as a judge here always decodes greedily (same answer, same reward).
SAMPLING_PARAMS = ("max_completions_tokens", "temperature", "top_p", "seed", "reasoning_effort")

# type -> (required keys, optional keys); every type also takes `type`, `name`, `pass_threshold`
# (not label_model, which passes on passing_labels) and, at the top level, `weight`.
# Keys accepted and ignored, from OpenAI: python.image_tag (there is no sandbox image here).
TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "string_check": (("input", "reference", "operation"), ()),
    "text_similarity": (("input", "reference", "evaluation_metric"), ("model",)),
    "regex": (("pattern",), ("input", "flags")),
    "json": ((), ("input", "schema")),
    "number": (("reference",), ("input", "tolerance", "relative")),
    "multi": (("graders", "calculate_output"), ("range",)),
    "python": (("source",), ("trust_code", "image_tag")),
    "score_model": (("model", "input"), ("range", "sampling_params", "label")),
    "label_model": (("model", "input", "labels", "passing_labels"), ("sampling_params",)),
}
MODEL_TYPES = ("score_model", "label_model")


def check_specs(specs, where: str = "rewards") -> list[dict]:
    """Validate grader definitions without importing torch or any model. `specs`: one grader
    dict or a list of them; returns the list. Raises GraderError (a ValueError) naming the key
    path and the fix."""
    items = as_list(specs, where)
    names = set()
    for i, spec in enumerate(items):
        path = at(where, specs, i)
        check_one(spec, path, top=True)
        name = top_name(spec, i)
        if name in names:
            raise GraderError(f"{path}.name: {name!r} is used by two graders; give each a different name")
        names.add(name)
    if sum(number(s.get("weight", 1), "") for s in items) <= 0:
        raise GraderError(f"{where}: every weight is 0; give at least one grader a weight above 0")
    return items


def as_list(specs, where: str) -> list[dict]:
    if isinstance(specs, dict):
        return [specs]
    if not isinstance(specs, (list, tuple)) or not specs:
        raise GraderError(f"{where}: give a grader ({{type: string_check, ...}}) or a non-empty list of them; "
                          f"types: {', '.join(TYPES)}")
    return list(specs)


def at(where: str, specs, i: int) -> str:
    """The path of the i-th grader: rewards[i], or rewards itself when one grader was given."""
    return where if isinstance(specs, dict) else f"{where}[{i}]"


def top_name(spec: dict, i: int) -> str:
    return spec.get("name") or f"{spec['type']}_{i}"


def number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GraderError(f"{where}: give a number, not {value!r}")
    return float(value)


def check_one(spec, path: str, top: bool) -> None:
    if not isinstance(spec, dict):
        raise GraderError(f"{path}: give a grader as a mapping with a `type`; types: {', '.join(TYPES)}")
    kind = spec.get("type")
    if kind not in TYPES:
        shown = "missing" if kind is None else f"{kind!r} is not a grader type"
        raise GraderError(f"{path}.type: {shown}; allowed: {', '.join(TYPES)}")
    required, optional = TYPES[kind]
    allowed = {"type", "name", *required, *optional}
    if kind != "label_model":
        allowed.add("pass_threshold")
    if top:
        allowed.add("weight")
    for key in spec:
        if key not in allowed:
            extra = ("; weigh the graders inside a multi grader in its calculate_output"
                     if key == "weight" and not top else "")
            raise GraderError(f"{path}: unknown key {key!r} for a {kind} grader; allowed: "
                              f"{', '.join(sorted(allowed))}{extra}")
    if kind == "python" and spec.get("trust_code") is not True:
        raise GraderError(f"{path}: a python grader runs its code on this machine with your permissions; "
                          f"if you trust this code, add `trust_code: true` to this grader")
    for key in required:
        if key not in spec:
            raise GraderError(f"{path}: a {kind} grader needs `{key}`; its keys: {', '.join(sorted(allowed))}")
    if "name" in spec and (not isinstance(spec["name"], str) or not spec["name"].strip()):
        raise GraderError(f"{path}.name: give a non-empty string")
    if "weight" in spec and number(spec["weight"], f"{path}.weight") < 0:
        raise GraderError(f"{path}.weight: {spec['weight']} is negative; give a weight >= 0")
    if "pass_threshold" in spec:
        number(spec["pass_threshold"], f"{path}.pass_threshold")
    CHECKS[kind](spec, path)


def _choice(spec: dict, key: str, allowed, path: str) -> None:
    if spec[key] not in allowed:
        raise GraderError(f"{path}.{key}: {spec[key]!r} is not a{'n' if key[0] in 'aeio' else ''} {key}; "
                          f"allowed: {', '.join(allowed)}")


def _text_or_number(spec: dict, key: str, path: str) -> None:
    value = spec[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return  # YAML reads `reference: 42` as a number; it is compared as text "42"
    templates.check(value, f"{path}.{key}")


def _input(spec: dict, path: str) -> None:
    if "input" in spec:
        templates.check(spec["input"], f"{path}.input")


def _string_check(spec: dict, path: str) -> None:
    _input(spec, path)
    _text_or_number(spec, "reference", path)
    _choice(spec, "operation", OPERATIONS, path)


def _text_similarity(spec: dict, path: str) -> None:
    _input(spec, path)
    _text_or_number(spec, "reference", path)
    _choice(spec, "evaluation_metric", METRICS, path)
    cosine = spec["evaluation_metric"] == "cosine"
    if cosine and not spec.get("model"):
        raise GraderError(f"{path}.model: evaluation_metric cosine needs `model:`, a local sentence encoder "
                          f"(a model folder or the built-in minilm-l6), because OpenAI's embedding model is not "
                          f"available locally")
    if "model" in spec and not cosine:
        raise GraderError(f"{path}.model: only evaluation_metric cosine uses a model; remove `model`")
    if cosine and not isinstance(spec["model"], str):
        raise GraderError(f"{path}.model: give a folder or a built-in alias (minilm-l6) as a string")


def _regex(spec: dict, path: str) -> None:
    _input(spec, path)
    flags = spec.get("flags", "")
    if not isinstance(flags, str) or any(f not in REGEX_FLAGS for f in flags):
        raise GraderError(f"{path}.flags: {flags!r}: give letters from {', '.join(REGEX_FLAGS)} "
                          f"(i: ignore case, m: multi-line, s: dot matches newline, x: verbose)")
    if not isinstance(spec["pattern"], str):
        raise GraderError(f"{path}.pattern: give a regular expression as a string")
    try:
        re.compile(spec["pattern"], regex_flags(flags))
    except re.error as e:
        raise GraderError(f"{path}.pattern: {spec['pattern']!r} is not a regular expression ({e}); "
                          f"Python's re syntax") from None


def regex_flags(flags: str) -> int:
    out = 0
    for f in flags:
        out |= REGEX_FLAGS[f]
    return out


def _json(spec: dict, path: str) -> None:
    _input(spec, path)
    if "schema" not in spec:
        return
    if not isinstance(spec["schema"], (dict, bool)):
        raise GraderError(f"{path}.schema: give a JSON schema object (e.g. {{type: object, required: [answer]}})")
    json_validator(spec["schema"], f"{path}.schema")


def json_validator(schema, where: str):
    try:
        import jsonschema_rs
    except ImportError:
        raise GraderError(f"{where}: a json grader with a schema needs jsonschema-rs: pip install jsonschema-rs") from None
    try:
        return jsonschema_rs.validator_for(schema)
    except (ValueError, jsonschema_rs.ValidationError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GraderError(f"{where}: not a valid JSON schema ({first})") from None


def _number(spec: dict, path: str) -> None:
    _input(spec, path)
    _text_or_number(spec, "reference", path)
    for key in ("tolerance", "relative"):
        if key in spec and number(spec[key], f"{path}.{key}") < 0:
            raise GraderError(f"{path}.{key}: give a tolerance >= 0")


def _range(spec: dict, path: str) -> None:
    r = spec.get("range", [0, 1])
    if not isinstance(r, (list, tuple)) or len(r) != 2 or number(r[0], f"{path}.range[0]") >= number(
            r[1], f"{path}.range[1]"):
        raise GraderError(f"{path}.range: give [low, high] with low < high, e.g. [0, 10]")


def _multi(spec: dict, path: str) -> None:
    graders = spec["graders"]
    if not isinstance(graders, dict) or not graders:
        raise GraderError(f"{path}.graders: give a mapping {{name: grader, ...}}; the formula in "
                          f"calculate_output refers to the graders by these names")
    for key, sub in graders.items():
        if not isinstance(key, str) or not key.isidentifier() or key in ("min", "max", "abs", "sqrt", "log",
                                                                         "exp", "floor", "ceil"):
            raise GraderError(f"{path}.graders: {key!r} cannot be used in a formula; name graders with letters, "
                              f"digits and _ (not starting with a digit, not a function name)")
        check_one(sub, f"{path}.graders.{key}", top=False)
    Formula(spec["calculate_output"], list(graders), f"{path}.calculate_output")
    _range(spec, path)


def _python(spec: dict, path: str) -> None:
    source = spec["source"]
    if not isinstance(source, str) or not source.strip():
        raise GraderError(f"{path}.source: give Python code defining `def grade(sample, item) -> float`, "
                          f"or the path of a .py file that defines it")
    if is_source_file(source):
        return  # read (relative to the recipe's folder) when the graders are loaded
    check_python_source(source, f"{path}.source")


def is_source_file(source: str) -> bool:
    return "\n" not in source.strip() and source.strip().endswith(".py")


def check_python_source(source: str, where: str) -> None:
    """Parse, never run: the code runs only in load_graders."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise GraderError(f"{where}: Python syntax error at line {e.lineno}: {e.msg}") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "grade" for n in tree.body):
        raise GraderError(f"{where}: the code must define `def grade(sample, item) -> float` at the top level")


def _messages(spec: dict, path: str) -> None:
    msgs = spec["input"]
    if not isinstance(msgs, list) or not msgs:
        raise GraderError(f"{path}.input: give a list of messages [{{role: user, content: ...}}] "
                          f"(templates allowed in content)")
    for j, m in enumerate(msgs):
        where = f"{path}.input[{j}]"
        if not isinstance(m, dict):
            raise GraderError(f"{where}: give a message {{role, content}}")
        for key in m:
            if key not in ("role", "content", "type"):
                raise GraderError(f"{where}: unknown key {key!r}; allowed: role, content, type")
        if m.get("type", "message") != "message":
            raise GraderError(f"{where}.type: {m['type']!r}; allowed: message")
        if m.get("role") not in ROLES:
            raise GraderError(f"{where}.role: {m.get('role')!r} is not a role; allowed: {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, dict):
            # OpenAI's content object; only text reaches a local model
            if content.get("type") not in ("input_text", "output_text") or set(content) - {"type", "text"}:
                raise GraderError(f"{where}.content: give text, or {{type: input_text, text: ...}}; images and "
                                  f"audio are not supported by local graders")
            content = content.get("text")
        templates.check(content, f"{where}.content")


def _sampling(spec: dict, path: str) -> None:
    params = spec.get("sampling_params", {})
    if not isinstance(params, dict):
        raise GraderError(f"{path}.sampling_params: give a mapping; keys: {', '.join(SAMPLING_PARAMS)}")
    for key in params:
        if key not in SAMPLING_PARAMS:
            raise GraderError(f"{path}.sampling_params: unknown key {key!r}; allowed: {', '.join(SAMPLING_PARAMS)}")
    if "max_completions_tokens" in params:
        n = params["max_completions_tokens"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise GraderError(f"{path}.sampling_params.max_completions_tokens: give a whole number >= 1")


def _model_key(spec: dict, path: str) -> None:
    if not isinstance(spec["model"], str) or not spec["model"].strip():
        raise GraderError(f"{path}.model: give a tuneline run folder, a local chat model folder or a built-in "
                          f"alias, as a string")


def _score_model(spec: dict, path: str) -> None:
    _model_key(spec, path)
    _messages(spec, path)
    _range(spec, path)
    _sampling(spec, path)
    if "label" in spec and not isinstance(spec["label"], str):
        raise GraderError(f"{path}.label: give the classify run's label whose probability is the score")


def _label_model(spec: dict, path: str) -> None:
    _model_key(spec, path)
    _messages(spec, path)
    _sampling(spec, path)
    labels, passing = spec["labels"], spec["passing_labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise GraderError(f"{path}.labels: give a list of label strings")
    if len(set(labels)) != len(labels):
        raise GraderError(f"{path}.labels: a label is listed twice")
    if not isinstance(passing, list) or not passing:
        raise GraderError(f"{path}.passing_labels: give a non-empty list drawn from labels ({', '.join(labels)})")
    for x in passing:
        if x not in labels:
            raise GraderError(f"{path}.passing_labels: {x!r} is not in labels; allowed: {', '.join(labels)}")


CHECKS = {"string_check": _string_check, "text_similarity": _text_similarity, "regex": _regex, "json": _json,
          "number": _number, "multi": _multi, "python": _python, "score_model": _score_model,
          "label_model": _label_model}
