"""Graders (tuneline.rewards): each type against hand-computed values, templates, the multi
formula's safety, python's trust_code, check_specs' messages, combining, model graders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tuneline.rewards import GraderError, check_specs, load_graders, local_models
from tuneline.rewards.judges import parse_label

OUT = "{{sample.output_text}}"


def one(spec: dict, output: str, item: dict | None = None, **kw) -> float:
    return load_graders(spec, **kw).score(item or {}, output)["score"]


def refused(specs, match: str):
    with pytest.raises(GraderError, match=match) as e:
        check_specs(specs)
    assert isinstance(e.value, ValueError)
    return str(e.value)


# -- checking stays light ----------------------------------------------------------------------
def test_check_specs_imports_no_torch_nor_metric_libraries():
    specs = [
        {"type": "text_similarity", "input": OUT, "reference": "x", "evaluation_metric": "cosine", "model": "minilm-l6"},
        {"type": "text_similarity", "input": OUT, "reference": "x", "evaluation_metric": "meteor"},
        {"type": "score_model", "model": "no/such-model", "input": [{"role": "user", "content": OUT}]},
        {"type": "json", "schema": {"type": "object"}},
        {"type": "python", "source": "def grade(sample, item):\n    return 1.0\n", "trust_code": True},
    ]
    code = ("import sys, json; from tuneline.rewards import check_specs; "
            f"check_specs(json.loads({json.dumps(json.dumps(specs))})); "
            "print([m for m in ('torch', 'transformers', 'nltk', 'sacrebleu', 'rouge_score') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert "WARNING" not in r.stderr  # checking never runs the python grader


# -- rule graders ------------------------------------------------------------------------------
@pytest.mark.parametrize("op, output, reference, expected", [
    ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0), ("ne", "Lyon", "Paris", 1.0),
    ("ne", "Paris", "Paris", 0.0), ("like", "It is Paris.", "Paris", 1.0), ("like", "It is paris.", "Paris", 0.0),
    ("ilike", "It is PARIS.", "Paris", 1.0), ("ilike", "It is Lyon.", "Paris", 0.0),
])
def test_string_check(op, output, reference, expected):
    spec = {"type": "string_check", "name": "city", "input": OUT, "reference": "{{item.city}}", "operation": op}
    assert one(spec, output, {"city": reference}) == expected


def test_string_check_numeric_reference_from_yaml_compares_as_text():
    assert one({"type": "string_check", "input": OUT, "reference": 42, "operation": "eq"}, "42") == 1.0


@pytest.mark.parametrize("metric, output, reference, expected", [
    ("fuzzy_match", "hallo", "hello", 0.8),                     # Indel: 1 - 2/10
    ("fuzzy_match", "hello", "hello world", 1 - 6 / 16),       # ratio, not WRatio's 0.9 for a substring
    ("bleu", "the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("rouge_1", "a b c d", "a b c e", 0.75),
    ("rouge_2", "a b c d", "a b c e", 2 / 3),
    ("rouge_l", "a b x d", "a b c d", 0.75),
    ("gleu", "the cat sat", "the cat sat", 1.0),
    ("gleu", "dog", "the cat sat", 0.0),
])
def test_text_similarity(metric, output, reference, expected):
    spec = {"type": "text_similarity", "input": OUT, "reference": reference, "evaluation_metric": metric,
            "pass_threshold": 0.5}
    result = load_graders(spec).score({}, output)
    assert result["score"] == pytest.approx(expected)
    assert result["passed"] is (expected >= 0.5)


def test_meteor_checks_but_says_it_is_unavailable_offline(monkeypatch):
    spec = {"type": "text_similarity", "input": OUT, "reference": "x", "evaluation_metric": "meteor"}
    check_specs(spec)
    monkeypatch.setattr("tuneline.rewards.basic.meteor_available", lambda: False)
    with pytest.raises(GraderError, match=r"rewards\.evaluation_metric: meteor needs NLTK's WordNet data.*offline"
                                          r".*bleu, gleu, rouge_l or fuzzy_match"):
        load_graders(spec)


def test_cosine_needs_a_model():
    refused({"type": "text_similarity", "input": OUT, "reference": "x", "evaluation_metric": "cosine"},
            r"rewards\.model: evaluation_metric cosine needs `model:`.*OpenAI's embedding model is not available")


def test_cosine_with_a_local_encoder(tiny_bert):
    spec = {"type": "text_similarity", "input": OUT, "reference": "{{item.ref}}", "evaluation_metric": "cosine",
            "model": str(tiny_bert)}
    g = load_graders(spec)
    same, other = g.score_many([{"ref": "the blue sky"}, {"ref": "the blue sky"}], ["the blue sky", "ten red cars"])
    assert same["score"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= other["score"] < 1.0


def test_regex():
    spec = {"type": "regex", "pattern": r"^answer: \d+$", "flags": "im"}
    assert one(spec, "thinking...\nANSWER: 42") == 1.0
    assert one(spec, "answer: forty-two") == 0.0
    assert one({"type": "regex", "pattern": "b+", "input": "{{item.x}}"}, "", {"x": "abba"}) == 1.0
    refused({"type": "regex", "pattern": "(unclosed"}, r"rewards\.pattern: '\(unclosed' is not a regular expression")
    refused({"type": "regex", "pattern": "a", "flags": "iq"}, r"rewards\.flags: 'iq': give letters from i, m, s, x")


def test_json_with_and_without_schema():
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}
    g = load_graders([{"type": "json", "name": "any"}, {"type": "json", "name": "shaped", "schema": schema}])
    rows = g.score_many([{}] * 4, ['{"answer": 3}', '{"answer": "3"}', "[1, 2]", "answer: 3"])
    assert [r["by_grader"] for r in rows] == [{"any": 1.0, "shaped": 1.0}, {"any": 1.0, "shaped": 0.0},
                                              {"any": 1.0, "shaped": 0.0}, {"any": 0.0, "shaped": 0.0}]
    refused({"type": "json", "schema": {"type": "nope"}}, r"rewards\.schema: not a valid JSON schema")


@pytest.mark.parametrize("spec, output, expected", [
    ({"reference": "1234.5"}, "It costs $1,234.50 in total", 1.0),
    ({"reference": 12}, "about 12.4 apples", 0.0),
    ({"reference": 12, "tolerance": 0.5}, "about 12.4 apples", 1.0),
    ({"reference": 200, "relative": 0.01}, "-> 201.9", 1.0),
    ({"reference": 200, "relative": 0.01}, "-> 202.1", 0.0),
    ({"reference": "{{item.gold}}"}, "x = -3e2", 1.0),
    ({"reference": 5}, "no digits here", 0.0),
])
def test_number(spec, output, expected):
    assert one({"type": "number", **spec}, output, {"gold": "-300"}) == expected


# -- templates ---------------------------------------------------------------------------------
def test_templates_nested_fields_indexes_and_output_json():
    item = {"meta": {"lang": "fr"}, "refs": ["Paris", "Lyon"]}
    spec = {"type": "string_check", "operation": "eq",
            "input": "{{ sample.output_json.city }}/{{sample.output_json.tags.1}}/{{sample.output_json.none}}",
            "reference": "{{item.refs.0}}/{{ item.refs[1] }}/"}
    assert one(spec, '{"city": "Paris", "tags": ["a", "Lyon"]}', item) == 1.0
    assert one(spec, "not json", item) == 0.0  # output_json fields are empty strings then: "//" != reference
    lang = {"type": "string_check", "operation": "eq", "input": "{{item.meta.lang}}", "reference": "fr"}
    assert one(lang, "", item) == 1.0
    fenced = {"type": "string_check", "operation": "eq", "input": "{{sample.output_json.a}}", "reference": "1"}
    assert one(fenced, 'Here:\n```json\n{"a": 1}\n```') == 1.0


def test_missing_item_field_names_the_field_and_the_rows_fields():
    g = load_graders({"type": "string_check", "input": OUT, "reference": "{{item.answer}}", "operation": "eq"})
    with pytest.raises(ValueError, match=r"rewards\.reference: template \{\{item\.answer\}\} needs item\.answer, "
                                         r"which this row lacks \(item: it has the fields: question, gold\)"):
        g.score({"question": "q", "gold": "g"}, "x")
    nested = load_graders({"type": "regex", "pattern": "x", "input": "{{item.meta.lang}}"})
    with pytest.raises(ValueError, match=r"needs item\.meta\.lang.*\(item\.meta: it has the fields: source\)"):
        nested.score({"meta": {"source": "web"}}, "x")


@pytest.mark.parametrize("template, match", [
    ("{{ foo.bar }}", r"rewards\.input: template '\{\{ foo\.bar \}\}' names namespace 'foo'; allowed: item"),
    ("{{item}}", r"needs a field"),
    ("{{sample.output_tools}}", r"exists only in OpenAI's API"),
    ("{{sample.score}}", r"is not a sample field; allowed: sample\.output_text"),
    ("{{ item.a b }}", r"is not \{\{item\.FIELD\}\}"),
])
def test_template_syntax_is_checked_early(template, match):
    refused({"type": "string_check", "input": template, "reference": "x", "operation": "eq"}, match)


# -- multi ---------------------------------------------------------------------------------------
def _multi(formula: str, **extra) -> dict:
    return {"type": "multi", "name": "total", "calculate_output": formula, **extra, "graders": {
        "exact": {"type": "string_check", "name": "exact", "input": OUT, "reference": "{{item.a}}",
                  "operation": "eq"},
        "close": {"type": "text_similarity", "name": "close", "input": OUT, "reference": "{{item.a}}",
                  "evaluation_metric": "fuzzy_match"},
    }}


@pytest.mark.parametrize("formula, expected", [
    ("0.5 * exact + 0.5 * close", 0.4),        # exact 0, close 0.8 (hallo / hello)
    ("max(exact, close) ** 2", 0.64),
    ("min(1, abs(-close) + floor(0.9) + ceil(0.1) * 0)", 0.8),
    ("sqrt(close * close) - log(exp(0))", 0.8),
    ("-(exact - close) / 2", 0.4),
    ("close * 2", 1.0),                         # 1.6, clamped
])
def test_multi_formula(formula, expected):
    assert one(_multi(formula), "hallo", {"a": "hello"}) == pytest.approx(expected)


def test_multi_range_normalises_the_formula():
    assert one(_multi("exact + close", range=[0, 2]), "hallo", {"a": "hello"}) == pytest.approx(0.4)


@pytest.mark.parametrize("formula, match", [
    ("__import__('os')", r"'__import__' is not an allowed function"),
    ("exact.__class__", r"'exact\.__class__' is attribute access"),
    ("().__class__.__bases__[0]", r"attribute access|is not allowed"),
    ("open('x')", r"'open' is not an allowed function"),
    ("exact if close else 0", r"is not allowed in a formula"),
    ("exact > close", r"is not allowed in a formula"),
    ("(lambda: 1)()", r"is not an allowed function"),
    ("exact + bogus", r"'bogus' is not one of this multi grader's graders \(exact, close\)"),
    ("exact // 2", r"uses an operator that is not allowed"),
    ("'a' * 3", r"is not a number"),
    ("sqrt(exact, close)", r"gives sqrt 2 arguments"),
    ("exact +", r"is not a formula"),
])
def test_multi_formula_refuses_anything_but_arithmetic(formula, match):
    msg = refused([{"type": "regex", "pattern": "x"}, _multi(formula)], r"rewards\[1\]\.calculate_output: .*" + match)
    assert "allowed: numbers, grader names" in msg and "min, max, abs, sqrt, log, exp, floor, ceil" in msg


def test_multi_math_errors_are_counted_per_grader():
    a, b = _multi("close / exact"), {**_multi("10 ** (1000 * close)"), "name": "big"}
    g = load_graders([a, b])
    assert g.score({"a": "hello"}, "hallo")["score"] == 0.0
    assert g.errors == {"total": 1, "big": 1}


# -- python --------------------------------------------------------------------------------------
GRADE = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['gold'] else 0.25\n"


def test_python_needs_trust_code():
    msg = refused({"type": "python", "name": "mine", "source": GRADE},
                  r"rewards: a python grader runs its code on this machine with your permissions")
    assert "add `trust_code: true` to this grader" in msg
    refused({"type": "python", "source": GRADE, "trust_code": "yes"}, r"trust_code: true")
    refused({"type": "python", "source": "def nope(): pass", "trust_code": True},
            r"rewards\.source: the code must define `def grade\(sample, item\) -> float`")
    refused({"type": "python", "source": "def grade(:", "trust_code": True}, r"Python syntax error at line 1")


def test_python_runs_with_trust_code_and_warns_once(capsys):
    g = load_graders([{"type": "python", "source": GRADE, "trust_code": True, "image_tag": "2025-05-08"}])
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1
    assert "WARNING: rewards[0] runs Python code from the recipe with your permissions (trust_code: true)" in err
    assert [r["score"] for r in g.score_many([{"gold": "a"}, {"gold": "a"}], ["a", "b"])] == [1.0, 0.25]


def test_python_errors_score_zero_and_are_counted(capsys, tmp_path):
    (tmp_path / "grader.py").write_text("def grade(sample, item):\n    return 1 / len(sample['output_text'])\n")
    g = load_graders({"type": "python", "name": "inv", "source": "grader.py", "trust_code": True,
                      "pass_threshold": 0.5}, base_dir=tmp_path)
    rows = g.score_many([{}] * 4, ["a", "", "ab", ""])
    assert [r["score"] for r in rows] == [1.0, 0.0, 0.5, 0.0]
    assert [r["passed"] for r in rows] == [True, False, True, False]
    assert g.errors == {"inv": 2}
    assert capsys.readouterr().err.count("ZeroDivisionError") == 1  # the first traceback only
    with pytest.raises(GraderError, match="not found"):
        load_graders({"type": "python", "source": "missing.py", "trust_code": True}, base_dir=tmp_path)


# -- check_specs' messages -------------------------------------------------------------------------
@pytest.mark.parametrize("specs, match", [
    ([{"type": "json"}, {"type": "string_check", "input": OUT, "reference": "a", "operation": "equals"}],
     r"^rewards\[1\]\.operation: 'equals' is not an operation; allowed: eq, ne, like, ilike$"),
    ({"type": "string_match"}, r"^rewards\.type: 'string_match' is not a grader type; allowed: string_check, "),
    ({"name": "x"}, r"^rewards\.type: missing; allowed:"),
    ({"type": "regex", "pattern": "a", "patern": "b"},
     (r"rewards: unknown key 'patern' for a regex grader; allowed: flags, input, name, pass_threshold, pattern, "
      r"type, weight$")),
    ({"type": "string_check", "input": OUT, "operation": "eq"}, r"rewards: a string_check grader needs `reference`"),
    ({"type": "text_similarity", "input": OUT, "reference": "a", "evaluation_metric": "rouge"},
     r"rewards\.evaluation_metric: 'rouge' is not an evaluation_metric; allowed: fuzzy_match, bleu, .*rouge_l"),
    (_multi("exact") | {"graders": {"exact": {"type": "string_check", "input": OUT, "reference": "a",
                                               "operation": "is"}}},
     r"^rewards\.graders\.exact\.operation: 'is' is not an operation"),
    (_multi("exact") | {"graders": {"exact": {"type": "json", "weight": 2}}},
     r"rewards\.graders\.exact: unknown key 'weight'.*weigh the graders inside a multi grader"),
    (_multi("x") | {"graders": {"max": {"type": "json"}}}, r"rewards\.graders: 'max' cannot be used in a formula"),
    ([{"type": "json"}, {"type": "json", "name": "json_0"}], r"rewards\[1\]\.name: 'json_0' is used by two graders"),
    ([{"type": "json", "weight": 0}], r"every weight is 0"),
    ({"type": "json", "weight": -1}, r"rewards\.weight: -1 is negative"),
    ({"type": "json", "pass_threshold": "high"}, r"rewards\.pass_threshold: give a number"),
    ([], r"rewards: give a grader"),
    ({"type": "label_model", "model": "m", "input": [{"role": "user", "content": OUT}], "labels": ["good", "bad"],
      "passing_labels": ["great"]}, r"rewards\.passing_labels: 'great' is not in labels; allowed: good, bad"),
    ({"type": "label_model", "model": "m", "input": [{"role": "user", "content": OUT}], "labels": ["a"],
      "passing_labels": ["a"], "pass_threshold": 1}, r"unknown key 'pass_threshold' for a label_model grader"),
    ({"type": "score_model", "model": "m", "input": [{"role": "judge", "content": OUT}]},
     r"rewards\.input\[0\]\.role: 'judge' is not a role; allowed: system, developer, user, assistant"),
    ({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "{{item}}"}]},
     r"rewards\.input\[0\]\.content: template '\{\{item\}\}' needs a field"),
    ({"type": "score_model", "model": "m", "input": [{"role": "user", "content": OUT}], "range": [5, 1]},
     r"rewards\.range: give \[low, high\] with low < high"),
    ({"type": "score_model", "model": "m", "input": [{"role": "user", "content": OUT}],
      "sampling_params": {"temprature": 0}}, r"rewards\.sampling_params: unknown key 'temprature'; allowed: "),
])
def test_check_specs_names_the_path_and_the_fix(specs, match):
    refused(specs, match)


def test_openai_definitions_load_unchanged():
    # shapes as OpenAI's reinforcement fine-tuning documents them (model graders checked, not loaded)
    openai = [
        {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
         "reference": "{{ item.reference_answer }}", "operation": "eq"},
        {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
         "reference": "{{item.reference_answer}}", "evaluation_metric": "rouge_l", "pass_threshold": 0.8},
        {"type": "score_model", "name": "judge", "model": "gpt-4o-2024-08-06", "range": [1, 7], "pass_threshold": 5,
         "sampling_params": {"temperature": 1, "top_p": 1, "seed": 42, "max_completions_tokens": 32768,
                             "reasoning_effort": "medium"},
         "input": [{"role": "system", "content": "Grade 1 to 7."},
                   {"role": "user", "type": "message",
                    "content": {"type": "input_text", "text": "Answer: {{sample.output_text}}"}}]},
        {"type": "label_model", "name": "tone", "model": "gpt-4o-mini", "labels": ["polite", "rude"],
         "passing_labels": ["polite"], "input": [{"role": "developer", "content": "{{sample.output_text}}"}]},
        {"type": "multi", "name": "both", "calculate_output": "0.5 * a + 0.5 * b", "graders": {
            "a": {"type": "string_check", "name": "a", "input": "{{sample.output_json.x}}", "reference": "1",
                  "operation": "ilike"},
            "b": {"type": "text_similarity", "name": "b", "input": "{{sample.output_text}}", "reference": "x",
                  "evaluation_metric": "fuzzy_match"}}},
    ]
    assert check_specs(openai) == openai
    with pytest.raises(GraderError, match=r"rewards\[2\]\.model: .*'gpt-4o-2024-08-06' is an OpenAI model, which "
                                          r"is not available locally"):
        load_graders(openai)


# -- combining ------------------------------------------------------------------------------------
def test_weighted_score_and_pass_rule():
    g = load_graders([
        {"type": "string_check", "name": "exact", "input": OUT, "reference": "hello", "operation": "eq", "weight": 3},
        {"type": "text_similarity", "name": "close", "input": OUT, "reference": "hello",
         "evaluation_metric": "fuzzy_match", "pass_threshold": 0.7},
        {"type": "regex", "pattern": "h", "weight": 0},  # reported, not counted in the score; still must pass
    ])
    assert g.names == ["exact", "close", "regex_2"]
    hallo, hello, jello = g.score_many([{}] * 3, ["hallo", "hello", "jello"])
    assert hallo == {"score": pytest.approx((3 * 0 + 0.8) / 4), "passed": False,
                     "by_grader": {"exact": 0.0, "close": pytest.approx(0.8), "regex_2": 1.0}}
    assert hello["score"] == 1.0 and hello["passed"]
    assert jello["by_grader"]["regex_2"] == 0.0 and not jello["passed"]
    assert g.score({}, "hallo") == hallo
    with pytest.raises(ValueError, match="2 items but 1 outputs"):
        g.score_many([{}, {}], ["x"])


def test_a_grader_without_threshold_passes_at_half():
    g = load_graders({"type": "text_similarity", "input": OUT, "reference": "abcd", "evaluation_metric": "fuzzy_match"})
    assert g.score({}, "abxy")["passed"] is True      # 0.5
    assert g.score({}, "axyz")["passed"] is False     # 0.25


# -- model graders -----------------------------------------------------------------------------------
class FakeChat:
    kind = "chat"

    def __init__(self, answers):
        self.replies, self.seen = list(answers), []

    def answers(self, conversations, max_new_tokens):
        self.seen.append((conversations, max_new_tokens))
        return [self.replies.pop(0) for _ in conversations]


class FakeClassify:
    kind = "classify"
    labels = ("bad", "good")

    def probabilities(self, texts):
        self.texts = texts
        return [{"bad": 0.2, "good": 0.8} if "great" in t else {"bad": 0.9, "good": 0.1} for t in texts]


@pytest.fixture
def judges(monkeypatch):
    """Replace model opening with fakes; counts how often each model is opened."""
    opened = {}

    def fake(spec, base_dir, where):
        opened[spec] = opened.get(spec, 0) + 1
        return FakeClassify() if spec.startswith("rm") else FakeChat(judges.answers)

    monkeypatch.setattr(local_models, "_open_judge", fake)
    judges.answers = []
    judges.opened = opened
    return judges


JUDGE_INPUT = [{"role": "developer", "content": "Rate 0-10 the answer to {{item.q}}."},
               {"role": "user", "content": "{{sample.output_text}}"}]


def test_score_model_with_a_chat_judge(judges):
    judges.answers = ["Score: 7/10", "12", "no idea", "-3"]
    spec = {"type": "score_model", "name": "judge", "model": "chat-a", "range": [0, 10], "pass_threshold": 6,
            "input": JUDGE_INPUT, "sampling_params": {"max_completions_tokens": 8, "temperature": 1.0}}
    g = load_graders(spec)
    rows = g.score_many([{"q": "why"}] * 4, ["a", "b", "c", "d"])
    assert [r["score"] for r in rows] == [pytest.approx(0.7), 1.0, 0.0, 0.0]
    assert [r["passed"] for r in rows] == [True, True, False, False]
    assert g.errors == {"judge": 1}  # "no idea": no number
    (convs, max_new), = g.graders[0].judge.seen  # one batch for all rows
    assert max_new == 8 and len(convs) == 4
    assert convs[0] == [{"role": "system", "content": "Rate 0-10 the answer to why."}, {"role": "user", "content": "a"}]


def test_label_model_with_a_chat_judge(judges):
    judges.answers = ["Polite.", "I think it is rude", "impolite", "neither"]
    spec = {"type": "label_model", "name": "tone", "model": "chat-a", "labels": ["polite", "rude", "impolite"],
            "passing_labels": ["polite"], "input": JUDGE_INPUT}
    g = load_graders(spec)
    assert [r["score"] for r in g.score_many([{"q": "x"}] * 4, list("abcd"))] == [1.0, 0.0, 0.0, 0.0]
    assert g.errors == {"tone": 1}


@pytest.mark.parametrize("answer, expected", [
    ("rude", "rude"), ("**Rude**", "rude"), ("The answer is polite, not rude", "polite"),
    ("very impolite", "impolite"), ("not-a-label", None), ("Label: very good", "very good"),
])
def test_parse_label(answer, expected):
    assert parse_label(answer, ["polite", "rude", "impolite", "good", "very good"]) == expected


def test_classify_judges_and_one_model_per_path(judges):
    specs = [
        {"type": "score_model", "name": "rm", "model": "rm-run", "range": [1, 5], "pass_threshold": 4,
         "input": [{"role": "user", "content": "{{item.q}}"}, {"role": "assistant", "content": OUT}]},
        {"type": "score_model", "name": "rm_bad", "model": "rm-run", "label": "bad",
         "input": [{"role": "user", "content": OUT}]},
        {"type": "label_model", "name": "lm", "model": "rm-run", "labels": ["good", "bad"], "passing_labels": ["good"],
         "input": [{"role": "user", "content": OUT}]},
    ]
    g = load_graders(specs)
    assert judges.opened == {"rm-run": 1}
    great, meh = g.score_many([{"q": "Q"}] * 2, ["great", "meh"])
    assert great["by_grader"] == {"rm": pytest.approx(0.8), "rm_bad": pytest.approx(0.2), "lm": 1.0}
    assert great["passed"] is False  # rm_bad 0.2 < 0.5
    assert meh["by_grader"] == {"rm": pytest.approx(0.1), "rm_bad": pytest.approx(0.9), "lm": 0.0}
    with pytest.raises(GraderError, match=r"rewards\.label: 'neutral' is not a label of rm-run; allowed: bad, good"):
        load_graders({**specs[1], "label": "neutral"})
    with pytest.raises(GraderError, match=r"rewards\.label: only a classify run"):
        load_graders({**specs[1], "model": "chat-a"})


def test_real_classify_run_as_reward_model(tiny_recipe):
    import tuneline

    result = tuneline.train(tiny_recipe("full", epochs=1))
    run = tuneline.load_run(result.path)
    texts = ["great product", "awful thing"]
    expected = run.predict(texts)
    g = load_graders([
        {"type": "score_model", "name": "pos", "model": result.path.name, "label": "positive",
         "input": [{"role": "user", "content": OUT}]},
        {"type": "label_model", "name": "is_pos", "model": result.path.name, "labels": ["positive", "negative"],
         "passing_labels": ["positive"], "input": [{"role": "user", "content": OUT}]},
    ], base_dir=result.path.parent)
    rows = g.score_many([{}, {}], texts)
    for row, pred in zip(rows, expected):
        assert row["by_grader"]["pos"] == pytest.approx(pred["scores"]["positive"], abs=1e-5)
        assert row["by_grader"]["is_pos"] == float(pred["label"] == "positive")
    assert g.score({}, texts[0])["by_grader"]["pos"] == pytest.approx(rows[0]["by_grader"]["pos"], abs=1e-5)


def test_real_chat_model_folder_as_judge(tiny_llama):
    # random weights: the answer is noise, so the point is the path (load, template, generate, parse)
    g = load_graders({"type": "score_model", "name": "j", "model": str(tiny_llama), "input": JUDGE_INPUT,
                      "sampling_params": {"max_completions_tokens": 4}})
    rows = g.score_many([{"q": "x"}, {"q": "y"}], ["a", "b"])
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert sum(g.errors.values()) <= 2


def test_grader_paths_resolve_against_the_recipe_folder(tmp_path):
    from tuneline.rewards import resolve_paths

    (tmp_path / "judge").mkdir()
    (tmp_path / "g.py").write_text("def grade(sample, item):\n    return 1.0\n")
    specs = [{"type": "python", "source": "g.py", "trust_code": True},
             {"type": "multi", "calculate_output": "a", "graders": {
                 "a": {"type": "score_model", "model": "judge", "input": [{"role": "user", "content": "x"}]}}},
             {"type": "score_model", "model": "smollm2-135m-instruct", "input": [{"role": "user", "content": "x"}]}]
    out = resolve_paths(specs, tmp_path)
    assert out[0]["source"] == str(tmp_path / "g.py")
    assert out[1]["graders"]["a"]["model"] == str(tmp_path / "judge")
    assert out[2]["model"] == "smollm2-135m-instruct"  # an alias stays
    assert specs[0]["source"] == "g.py"  # the input is not changed
