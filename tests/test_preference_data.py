"""Preference rows (data/preference.py): every format read, every bad row a line-precise error, format
detection; and the data audit of the shapes "pairs", "judgements" and "prompts"."""

import json
import random

import pytest

from tuneline.data.audit import audit, guess_shape
from tuneline.data.io import Rows, read_rows
from tuneline.data.preference import (PREFERENCE_FORMATS, Judgement, Pair, PromptRow, RowError,
                                      detect_preference_format, to_judgement, to_pair, to_prompt)
from tuneline.errors import UserError

from conftest import minilm_dir, write_jsonl

W = "data.jsonl:7"


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def rows_of(*records, path="data.jsonl"):
    return Rows.collect(path, enumerate(records, start=1))


# -- reading rows ---------------------------------------------------------------------

def test_formats_are_named():
    assert PREFERENCE_FORMATS == ("pairs", "openai_preference", "judgements", "prompts")


def test_trl_pairs_text_and_messages():
    assert to_pair({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, W, "pairs") == Pair([user("2+2?")], "4", "5")
    conv = {"prompt": [{"role": "system", "content": "be brief"}, user("2+2?")],
            "chosen": [bot("4")], "rejected": [bot("5")]}
    assert to_pair(conv, W, "pairs") == Pair([{"role": "system", "content": "be brief"}, user("2+2?")], "4", "5")
    multi = {"prompt": [user("hi"), bot("hello"), user("2+2?")], "chosen": [bot("4")], "rejected": "5"}
    assert to_pair(multi, W, "pairs").prompt == [user("hi"), bot("hello"), user("2+2?")]
    # UltraFeedback-style: a text prompt, answers that repeat the prompt's turn before the answer
    uf = {"prompt": "2+2?", "chosen": [user("2+2?"), bot("4")], "rejected": [user("2+2?"), bot("5")]}
    assert to_pair(uf, W, "pairs") == Pair([user("2+2?")], "4", "5")


def test_trl_implicit_prompt_is_the_shared_turns():
    rec = {"chosen": [user("hi"), bot("hello"), user("2+2?"), bot("4")],
           "rejected": [user("hi"), bot("hello"), user("2+2?"), bot("5")]}
    assert to_pair(rec, W, "pairs") == Pair([user("hi"), bot("hello"), user("2+2?")], "4", "5")


def test_openai_preference_rows():
    rec = {"input": {"messages": [{"role": "developer", "content": "be brief"},
                                  {"role": "user", "content": [{"type": "text", "text": "2+"}, {"type": "text", "text": "2?"}]}],
                     "tools": [{"type": "function", "function": {"name": "calc"}}], "parallel_tool_calls": True},
           "preferred_output": [bot("4")], "non_preferred_output": [bot("5")]}
    pair = to_pair(rec, W, "openai_preference")
    assert pair.prompt == [{"role": "system", "content": "be brief"}, user("2+2?")]
    assert (pair.chosen, pair.rejected) == ("4", "5") and pair.tools[0]["function"]["name"] == "calc"


def test_system_prompt_is_added_when_the_row_has_none():
    got = to_pair({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, W, "pairs", system_prompt="be brief")
    assert got.prompt == [{"role": "system", "content": "be brief"}, user("2+2?")]
    own = {"prompt": [{"role": "system", "content": "mine"}, user("q")], "completion": "a", "label": True}
    assert to_judgement(own, W, system_prompt="be brief").prompt[0]["content"] == "mine"
    assert to_prompt({"prompt": "q"}, W, system_prompt="s").prompt == [{"role": "system", "content": "s"}, user("q")]


def test_kto_judgements_text_and_messages():
    assert to_judgement({"prompt": "2+2?", "completion": "4", "label": True}, W) == Judgement([user("2+2?")], "4", True)
    rec = {"prompt": [user("2+2?")], "completion": [bot("5")], "label": False}
    assert to_judgement(rec, W) == Judgement([user("2+2?")], "5", False)


def test_grpo_prompts_with_reference_and_grader_fields():
    rec = {"messages": [user("2+2?"), bot("4")], "answer": "4", "difficulty": 1}
    row = to_prompt(rec, W)
    assert row == PromptRow([user("2+2?")], rec, "4")
    assert row.item["answer"] == "4"  # the whole record, for {{item.answer}}
    rft = {"messages": [{"role": "developer", "content": "solve"}, user("2+2?")], "reference_answer": "4"}
    assert to_prompt(rft, W) == PromptRow([{"role": "system", "content": "solve"}, user("2+2?")], rft, None)
    assert to_prompt({"prompt": "2+2?", "answer": "4"}, W).prompt == [user("2+2?")]
    assert to_prompt({"prompt": [user("2+2?"), bot("4")]}, W).reference == "4"


@pytest.mark.parametrize("rec, fmt, key, kind", [
    ({"prompt": "q", "chosen": "a"}, "pairs", "'rejected' is missing", "invalid"),
    ({"prompt": "q", "rejected": "b"}, "pairs", "'chosen' is missing", "invalid"),
    ({"chosen": "a", "rejected": "b"}, "pairs", "'prompt' is missing", "invalid"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "pairs", "'prompt' is empty", "empty_prompt"),
    ({"prompt": [{"role": "system", "content": "s"}], "chosen": "a", "rejected": "b"}, "pairs", "no user turn",
     "empty_prompt"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "pairs", "'chosen' is empty", "empty_side"),
    ({"prompt": "q", "chosen": "a", "rejected": [bot(" ")]}, "pairs", "'rejected' is empty", "empty_side"),
    ({"prompt": "q", "chosen": 4, "rejected": "b"}, "pairs", "'chosen' must be text", "invalid"),
    ({"prompt": [user("q"), bot("a")], "chosen": "a", "rejected": "b"}, "pairs", "must end with a user turn", "format"),
    ({"prompt": [bot("a"), user("q")], "chosen": "a", "rejected": "b"}, "pairs", "prompt: turn 1 is 'assistant'",
     "format"),
    ({"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, "pairs",
     "prompt[0] has unknown role 'robot'", "invalid"),
    ({"prompt": [user("q")], "chosen": [{"role": "assistant", "tool_calls": [{}]}], "rejected": "b"}, "pairs",
     "chosen[0] is a tool call", "invalid"),
    ({"prompt": "q", "chosen": [user("other"), bot("a")], "rejected": "b"}, "pairs", "'chosen' holds 2 turns",
     "format"),
    ({"prompt": [user([{"type": "image_url", "image_url": "x"}])], "chosen": "a", "rejected": "b"}, "pairs",
     "prompt[0].content[0] is a 'image_url' part", "invalid"),
    ({"chosen": [user("q"), bot("a")], "rejected": [user("other"), bot("b")]}, "pairs", "differ at turn 1", "format"),
    ({"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("b"), user("more")]}, "pairs",
     "'rejected' must end with the assistant's answer", "format"),
    ({"preferred_output": [bot("a")], "non_preferred_output": [bot("b")]}, "openai_preference", "'input' is missing",
     "invalid"),
    ({"input": {"messages": "q"}, "preferred_output": [bot("a")], "non_preferred_output": [bot("b")]},
     "openai_preference", "'input.messages' must be a list", "invalid"),
    ({"input": {"messages": [user("q")]}, "preferred_output": [bot("a")]}, "openai_preference",
     "'non_preferred_output' is missing", "invalid"),
])
def test_bad_pairs_name_file_line_and_key(rec, fmt, key, kind):
    with pytest.raises(RowError) as e:
        to_pair(rec, W, fmt)
    assert str(e.value).startswith(f"{W}: ") and key in str(e.value), str(e.value)
    assert e.value.kind == kind and isinstance(e.value, UserError)


@pytest.mark.parametrize("rec, key, kind", [
    ({"prompt": "q", "completion": "a"}, "'label' is missing", "invalid"),
    ({"prompt": "q", "completion": "a", "label": "true"}, "'label' must be true or false", "invalid"),
    ({"prompt": "q", "completion": "a", "label": 1}, "'label' must be true or false", "invalid"),
    ({"completion": "a", "label": True}, "'prompt' is missing", "invalid"),
    ({"prompt": "q", "label": True}, "'completion' is missing", "invalid"),
    ({"prompt": "", "completion": "a", "label": True}, "'prompt' is empty", "empty_prompt"),
    ({"prompt": "q", "completion": " ", "label": False}, "'completion' is empty", "empty_side"),
])
def test_bad_judgements_name_file_line_and_key(rec, key, kind):
    with pytest.raises(RowError) as e:
        to_judgement(rec, W)
    assert str(e.value).startswith(f"{W}: ") and key in str(e.value) and e.value.kind == kind, str(e.value)


@pytest.mark.parametrize("rec, key, kind", [
    ({"answer": "4"}, "neither 'messages' nor 'prompt'", "invalid"),
    ({"messages": [bot("4")]}, "holds only an assistant turn", "empty_prompt"),
    ({"messages": [user("")]}, "messages[0].content is empty", "empty_prompt"),
    ({"messages": "2+2?"}, "'messages' must be a list", "invalid"),
    ({"prompt": ""}, "'prompt' is empty", "empty_prompt"),
    ({"messages": [user("a"), user("b")]}, "messages: turn 2 is 'user'", "format"),
])
def test_bad_prompts_name_file_line_and_key(rec, key, kind):
    with pytest.raises(RowError) as e:
        to_prompt(rec, W)
    assert str(e.value).startswith(f"{W}: ") and key in str(e.value) and e.value.kind == kind, str(e.value)


def test_detection():
    assert detect_preference_format(rows_of({"prompt": "q", "chosen": "a", "rejected": "b"}), "pairs") == "pairs"
    assert detect_preference_format(rows_of({"chosen": [user("q"), bot("a")], "rejected": []}), "pairs") == "pairs"
    openai = {"input": {"messages": [user("q")]}, "preferred_output": [bot("a")], "non_preferred_output": [bot("b")]}
    assert detect_preference_format(rows_of(openai), "pairs") == "openai_preference"
    kto = {"prompt": "q", "completion": "a", "label": True}
    assert detect_preference_format(rows_of(kto), "judgements") == "judgements"
    assert detect_preference_format(rows_of({"messages": [user("q")], "answer": 1}), "prompts") == "prompts"
    assert detect_preference_format(rows_of({"prompt": "q"}), "prompts") == "prompts"
    with pytest.raises(ValueError):
        detect_preference_format(rows_of(kto), "chat")


@pytest.mark.parametrize("shape, rec, hint", [
    ("pairs", {"prompt": "q", "completion": "a", "label": True}, "train with kto"),
    ("judgements", {"prompt": "q", "chosen": "a", "rejected": "b"}, "two rows"),
    ("pairs", {"text": "q", "label": "x"}, ""),
    ("prompts", {"text": "q"}, ""),
    ("judgements", {"messages": [user("q"), bot("a")]}, "hold chats"),
])
def test_detection_failure_lists_the_accepted_shapes(shape, rec, hint):
    with pytest.raises(UserError) as e:
        detect_preference_format(rows_of(rec, path="prefs.jsonl"), shape)
    msg = str(e.value)
    assert msg.startswith("prefs.jsonl: ") and hint in msg and "Accepted:" in msg
    examples = {"pairs": ('"chosen": "4"', '"preferred_output"'), "judgements": ('"label": true',),
                "prompts": ('{"prompt": "What is 2+2?"',)}[shape]
    assert all(x in msg for x in examples), msg


# -- the audit ------------------------------------------------------------------------

VOCAB = [
    "password", "parcel", "delivery", "address", "card", "refund", "norway", "warranty", "blender", "return",
    "discount", "account", "payment", "store", "pickup", "invoice", "courier", "label", "tracking",
    "voucher", "basket", "kettle", "toaster", "laptop", "charger", "battery", "screen", "colour", "size",
    "exchange", "deposit", "loyalty", "points", "newsletter", "receipt", "postcode", "weekend", "express",
    "gift",
]


def _question(i):
    """A question of random words, different for each i (no two near duplicates)."""
    return "how do I " + " ".join(random.Random(i).sample(VOCAB, 7)) + f" {i}"


def _pairs(n, offset=0):
    return [{"prompt": _question(i + offset), "chosen": f"Here is how, step {i}: open settings and follow the link.",
             "rejected": f"No idea {i}."} for i in range(n)]


def _lines(result, check, severity=None):
    return {e["line"] for f in result.findings if f.check == check and severity in (None, f.severity)
            for e in f.examples}


def _checks(result):
    return {(f.check, f.severity) for f in result.findings}


def test_clean_pairs_have_no_errors_or_warnings(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", _pairs(12))
    test = write_jsonl(tmp_path / "test.jsonl", _pairs(3, offset=100))
    result = audit({"train": train, "test": test}, "pairs")
    assert not [f for f in result.findings if f.severity in ("error", "warning")], result.findings
    assert result.rows == {"train": 12, "test": 3}


def test_pairs_audit_findings(tmp_path):
    rows = _pairs(10)                                                                        # lines 1-10
    rows.append({"prompt": _question(50), "chosen": "Yes, we do!", "rejected": "yes we do"})   # 11 identical
    rows.append({"prompt": _question(51), "chosen": "", "rejected": "b"})                     # 12 empty side
    rows.append({"prompt": rows[2]["prompt"], "chosen": rows[2]["rejected"],
                 "rejected": rows[2]["chosen"]})                                              # 13 swaps 3
    rows.append(dict(rows[4]))                                                                # 14 duplicate of 5
    rows.append({"prompt": rows[5]["prompt"], "chosen": rows[5]["chosen"], "rejected": "Another bad one."})  # 15
    rows.append({"prompt": _question(52), "chosen": "ok"})                                    # 16 invalid
    rows.append({"prompt": "", "chosen": "a", "rejected": "b"})                               # 17 empty prompt
    rows.append({"prompt": _question(53), "chosen": "mail me at jane.doe@mail.example", "rejected": "no"})  # 18 pii
    rows.append({"prompt": _question(54), "chosen": "fine", "rejected": "call +44 20 7946 0958"})  # 19 pii (rejected)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"prompt": rows[0]["prompt"], "chosen": "a different answer", "rejected": "and another"},  # 1 leaks line 1
        {"prompt": _question(200), "chosen": "fresh", "rejected": "new"},
    ])
    result = audit({"train": read_rows(train, lenient=True), "test": read_rows(test, lenient=True)}, "pairs")
    assert _lines(result, "identical_pair", "warning") == {11}
    assert _lines(result, "empty_side", "error") == {12}
    assert [e["contradicts_line"] for f in result.findings if f.check == "contradicting_pairs"
            for e in f.examples] == [3]
    assert _lines(result, "contradicting_pairs", "warning") == {13}
    assert _lines(result, "duplicates") == {14}  # 15: the same prompt and chosen, another rejected: not a duplicate
    assert 16 in _lines(result, "invalid_rows") and 17 in _lines(result, "empty_prompt")
    assert {18, 19} <= _lines(result, "pii")
    leak = [e for f in result.findings if f.check == "leakage" for e in f.examples]
    assert [(e["line"], e["train_line"], e["kind"]) for e in leak] == [(1, 1, "exact")]  # the prompt, not the row
    assert "conflicting_labels" not in {f.check for f in result.findings}
    empty = next(f for f in result.findings if f.check == "empty_side")
    assert "'chosen' is empty" in empty.examples[0]["reason"] and empty.examples[0]["file"] == str(train)
    for line in (11, 12, 14, 16, 17):
        assert (str(train), line) in result.drop_reasons
    assert result.drop_reasons[(str(train), 1)] == "leakage"


def test_mostly_identical_pairs_are_an_error(tmp_path):
    rows = [{"prompt": _question(i), "chosen": f"Answer {i}.", "rejected": f"answer {i}"} for i in range(6)]
    rows += _pairs(2, offset=10)
    result = audit({"train": write_jsonl(tmp_path / "t.jsonl", rows)}, "pairs")
    assert ("identical_pair", "error") in _checks(result) and len(_lines(result, "identical_pair")) == 6
    f = next(f for f in result.findings if f.check == "identical_pair")
    assert f.examples[0]["identical_in_split"] == "6 of 8"


def test_openai_and_implicit_pairs_in_the_audit(tmp_path):
    openai = [{"input": {"messages": [user(_question(i))]}, "preferred_output": [bot(f"Sure {i}, here it is.")],
               "non_preferred_output": [bot(f"No {i}.")]} for i in range(4)]
    openai.append({"input": {"messages": [user(_question(9))]}, "preferred_output": [bot("x")]})  # line 5
    result = audit({"train": write_jsonl(tmp_path / "o.jsonl", openai)}, "pairs")
    assert result.rows == {"train": 5} and _lines(result, "invalid_rows") == {5}
    reason = next(f for f in result.findings if f.check == "invalid_rows").examples[0]["reason"]
    assert "'non_preferred_output' is missing" in reason
    implicit = [{"chosen": [user(_question(i)), bot(f"Sure {i}, here.")], "rejected": [user(_question(i)), bot("no")]}
                for i in range(4)]
    implicit.append({"chosen": [user("q"), bot("a")], "rejected": [user("other q"), bot("b")]})  # line 5
    result = audit({"train": write_jsonl(tmp_path / "i.jsonl", implicit)}, "pairs")
    assert _lines(result, "format") == {5}
    with pytest.raises(UserError, match="not a format of pairs"):
        audit({"train": write_jsonl(tmp_path / "p.jsonl", _pairs(2))}, "pairs", fmt="judgements")


def test_pairs_too_long_measures_the_longer_answer(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    long = " ".join(["the parcel was delayed at the depot"] * 12)
    rows = [{"prompt": _question(0), "chosen": "short answer", "rejected": long},   # 1: the rejected side is long
            {"prompt": _question(1), "chosen": long, "rejected": "short"},          # 2: the chosen side
            {"prompt": _question(2), "chosen": "short answer", "rejected": "brief"}]  # 3: fits
    result = audit({"train": write_jsonl(tmp_path / "t.jsonl", rows)}, "pairs", tokenizer=tok, max_length=64)
    flagged = {e["line"] for f in result.findings if f.check in ("too_long", "format") for e in f.examples}
    assert flagged == {1, 2}


def _judgements(n, good_every=2, offset=0):
    return [{"prompt": _question(i + offset), "completion": f"Answer number {i}, with the details.",
             "label": i % good_every == 0} for i in range(n)]


def test_judgements_audit_findings(tmp_path):
    rows = _judgements(10)                                                                  # lines 1-10
    rows.append({**rows[2], "label": not rows[2]["label"]})                                  # 11 contradicts 3
    rows.append({"prompt": _question(60), "completion": "ok", "label": "yes"})              # 12 invalid
    rows.append({"prompt": _question(61), "completion": "", "label": True})                 # 13 empty
    rows.append(dict(rows[4]))                                                              # 14 duplicate of 5
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": rows[7]["prompt"], "completion": "other", "label": True},
                                                 {"prompt": _question(300), "completion": "x", "label": False}])
    result = audit({"train": train, "test": test}, "judgements")
    contra = next(f for f in result.findings if f.check == "contradicting_judgements")
    assert contra.severity == "warning" and contra.count == 1
    assert contra.examples[0]["line"] == 3 and {3, 11} == set(contra.examples[0]["desirable_lines"]
                                                               + contra.examples[0]["undesirable_lines"])
    assert _lines(result, "invalid_rows") == {12} and _lines(result, "empty_side") == {13}
    assert _lines(result, "duplicates") == {14}
    assert [(e["line"], e["train_line"]) for f in result.findings if f.check == "leakage" for e in f.examples] == [(1, 8)]
    assert ("label_balance", "info") in _checks(result)
    assert not result.errors or {f.check for f in result.errors} == {"invalid_rows", "empty_side"}


def test_kto_label_balance(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [{**r, "label": True} for r in _judgements(6)])
    result = audit({"train": one}, "judgements")
    err = next(f for f in result.errors if f.check == "label_balance")
    assert "only desirable (true)" in err.message and err.examples[0]["undesirable"] == 0
    skewed = write_jsonl(tmp_path / "skewed.jsonl", _judgements(24, good_every=12))  # 2 desirable, 22 not
    held = write_jsonl(tmp_path / "held.jsonl", [{**r, "label": False} for r in _judgements(3, offset=50)])
    result = audit({"train": skewed, "validation": held}, "judgements")
    assert not result.errors
    warn = [f for f in result.findings if f.check == "label_balance" and f.severity == "warning"]
    assert any("desirable_weight / undesirable_weight" in f.message for f in warn)
    ratio = next(e for f in warn for e in f.examples if "ratio" in e)
    assert ratio["ratio"] == 11.0 and ratio["suggest"].startswith("desirable_weight: 11.0")
    assert any(e["split"] == "validation" for f in warn for e in f.examples)


def test_prompts_audit_findings(tmp_path):
    from transformers import AutoTokenizer

    rows = [{"messages": [user(_question(i))], "answer": str(i)} for i in range(8)]          # lines 1-8
    rows.append({"messages": [user(_question(3)), bot("3")], "answer": "three"})             # 9: a duplicate prompt
    rows.append({"prompt": "", "answer": "x"})                                               # 10 empty prompt
    rows.append({"messages": [user(" ".join(["a very long question about parcels"] * 20))]})  # 11 too long
    rows.append({"answer": "nothing to ask"})                                                # 12 invalid
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": _question(5), "answer": "5"},  # leaks line 6
                                                 {"prompt": _question(99), "answer": "99"}])
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    result = audit({"train": train, "test": test}, "prompts", tokenizer=tok, max_length=64)
    assert _lines(result, "duplicate_prompts", "warning") == {9}
    assert _lines(result, "empty_prompt", "error") == {10}
    assert _lines(result, "too_long") == {11} and _lines(result, "invalid_rows") == {12}
    assert [(e["line"], e["train_line"]) for f in result.findings if f.check == "leakage" for e in f.examples] == [(1, 6)]
    assert result.drop_reasons[(str(train), 9)] == "duplicate_prompts"


def test_the_system_prompt_tells_prompts_apart_but_not_near_duplicates(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "You are a pirate."}, user(_question(0))], "chosen": "a",
             "rejected": "b"},
            {"prompt": [{"role": "system", "content": "You are a clerk."}, user(_question(0))], "chosen": "a",
             "rejected": "b"}]
    rows += _pairs(4, offset=20)
    long_system = "Answer as the shop's support assistant, politely and with the order number. " * 4
    result = audit({"train": write_jsonl(tmp_path / "t.jsonl", rows)}, "pairs", system_prompt=long_system)
    assert "duplicates" not in {f.check for f in result.findings}  # another system turn: another prompt
    near = [e for f in result.findings if f.check == "near_duplicates" for e in f.examples]
    assert [e["line"] for e in near] == [2]  # the shared long system prompt makes no other row a near duplicate


def test_guess_shape_knows_pairs_and_judgements(tmp_path):
    assert guess_shape(write_jsonl(tmp_path / "p.jsonl", _pairs(2))) == "pairs"
    assert guess_shape(write_jsonl(tmp_path / "j.jsonl", _judgements(2))) == "judgements"
    chat = [{"prompt": "q", "completion": "a", "label": "neutral"}]
    assert guess_shape(write_jsonl(tmp_path / "c.jsonl", chat)) == "chat"


def test_audit_rows_in_memory_with_lines(tmp_path):
    rows = Rows("mem.jsonl", _pairs(3) + [{"prompt": "q", "chosen": "a"}], [2, 4, 6, 8], ["prompt", "chosen", "rejected"])
    result = audit({"train": rows}, "pairs")
    assert _lines(result, "invalid_rows") == {8}
    assert json.loads(json.dumps(result.as_dict(), default=str))["rows"] == {"train": 4}
