"""Graders (reward functions) in OpenAI's grader shapes: they score a model's answer to one row.

GRPO training uses the combined score as the reward; evaluation reports the mean score and the
pass rate. OpenAI fine-tuning grader definitions load unchanged (a python grader adds
`trust_code: true`).

    check_specs(specs)                 validate only: no torch, no model (while a recipe is checked)
    graders = load_graders(specs, base_dir)
    graders.score(item, output_text)   -> {"score": 0..1, "passed": bool, "by_grader": {name: 0..1}}
    graders.score_many(items, outputs) same, model graders batched

Types: string_check, text_similarity, score_model, label_model, python, multi (OpenAI's) and
regex, json, number (tuneline's). Templates: {{item.FIELD}}, {{sample.output_text}},
{{sample.output_json.FIELD}}.

Scores. Each grader's raw score is normalised by its `range` (score_model; multi as an
extension; default [0, 1]) and clamped into 0..1. The combined score is the weighted mean of
the top-level graders (`weight`, default 1; 0 reports a grader without counting it). A row
passes when every top-level grader passes: raw score >= its `pass_threshold` (in the grader's
own units, as OpenAI), or without one, normalised score >= 0.5 (a 0/1 grader must score 1).
A row a grader cannot grade (python code that raised, a judge's answer with no number or
label, a formula without a value) scores 0 and is counted in `Graders.errors`.

Accepted and ignored OpenAI keys: python `image_tag`; score_model/label_model
`sampling_params` except `max_completions_tokens` (judges decode greedily, so a reward is
reproducible). Modules: spec (checks), templates, formula (multi), similarity (metrics),
basic / code / judges / multi (grader types), local_models (judges, encoders), graders (load, score).
"""

from __future__ import annotations

from .errors import GraderError
from .graders import Graders, load_graders
from .paths import resolve_paths
from .spec import check_specs

__all__ = ["GraderError", "Graders", "check_specs", "load_graders", "resolve_paths"]
