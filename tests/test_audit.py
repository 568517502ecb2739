"""The data audit: each check finds its planted defect, with file and line; clean data stays quiet."""

import json
import subprocess
import sys

import pytest

from tuneline.data.audit import audit, find_pii, mask
from tuneline.data.io import read_rows

from conftest import synthetic_rows, write_jsonl

TUNELINE = [sys.executable, "-m", "tuneline.cli"]


def _lines(result, check):
    return {e["line"] for f in result.findings if f.check == check for e in f.examples}


def _counts(result):
    out = {}
    for f in result.findings:
        out[f.check] = out.get(f.check, 0) + f.count
    return out


LONG = ("the blender arrived on monday in a sturdy box and it crushes ice for smoothies in seconds "
        "without any strange noise so we are very happy with it great")


@pytest.fixture
def broken_classify(tmp_path):
    """A file that breaks every rule at once; line numbers are asserted below."""
    good = synthetic_rows(60, 5)
    rows = [json.dumps(r) for r in good]                                                  # lines 1-60
    rows.append('{"text": "broken json", "label": ')                                       # 61 invalid
    rows.append(json.dumps({"text": "no label here"}))                                      # 62 invalid
    rows.append(json.dumps({"text": "   ", "label": "positive"}))                           # 63 empty
    rows.append(json.dumps(good[0]))                                                       # 64 duplicate of 1
    rows.append(json.dumps({"text": good[1]["text"].upper() + "!!", "label": good[1]["label"]}))  # 65 dup after normalising
    other = "negative" if good[2]["label"] != "negative" else "positive"
    rows.append(json.dumps({"text": good[2]["text"], "label": other}))                      # 66 conflicting
    rows.append(json.dumps({"text": "write to john.doe@example.com or call +44 20 7946 0958", "label": "neutral"}))  # 67 pii
    rows.append(json.dumps({"text": "card 4111 1111 1111 1111 from 192.168.1.20", "label": "neutral"}))  # 68 pii
    rows.append(json.dumps({"text": "the cafÃ© was great and the crÃ¨me too", "label": "positive"}))   # 69 mojibake
    rows.append(json.dumps({"text": "bell\x07 character great", "label": "positive"}))                # 70 control
    rows.append(json.dumps({"text": "word " * 200 + "great", "label": "positive"}))                  # 71 too long
    rows.append(json.dumps({"text": "rare label row", "label": "mixed"}))                            # 72 tiny class
    train = tmp_path / "train.jsonl"
    with open(train, "wb") as f:
        f.write(("\n".join(rows) + "\n").encode())
        f.write(b'{"text": "bad \xff\xfe bytes great", "label": "positive"}\n')           # 73 invalid utf-8
        f.write((json.dumps({"text": LONG, "label": "positive"}) + "\n").encode())            # 74
    test_rows = synthetic_rows(10, 6) + [good[3], {"text": LONG + " truly", "label": "positive"},
                                          {"text": "unseen label", "label": "sarcastic"}]
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)                                 # 11 leak, 12 near, 13 unseen
    return train, test


def test_every_check_finds_its_planted_defect(broken_classify, tiny_bert):
    from transformers import AutoTokenizer

    train, test = broken_classify
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    result = audit({"train": read_rows(train, lenient=True), "test": read_rows(test, lenient=True)}, "labelled_text",
                   tokenizer=tok, max_length=64)
    assert {61, 62} <= _lines(result, "invalid_rows")
    assert 63 in _lines(result, "empty_text")
    assert {64, 65} <= _lines(result, "duplicates")
    assert _lines(result, "conflicting_labels")  # reported at the first occurrence (line 3)
    assert {67, 68} <= _lines(result, "pii")
    assert {69, 70, 73} <= _lines(result, "encoding")
    assert 71 in _lines(result, "too_long")
    assert {11, 12} <= _lines(result, "leakage")
    assert 13 in _lines(result, "imbalance")  # a test label never seen in train
    assert any(f.check == "imbalance" and f.severity == "warning" for f in result.findings)  # 'mixed' has 1 row
    # PII is never printed in full
    text = json.dumps(result.as_dict())
    assert "john.doe@example.com" not in text and "4111 1111 1111 1111" not in text


def test_near_duplicates_and_label_noise(tmp_path):
    rows = synthetic_rows(300, 9)
    rows.append({"text": LONG, "label": "positive"})                 # line 301
    rows.append({"text": LONG + " indeed", "label": "positive"})     # line 302: near duplicate of 301
    flipped = []
    for i in range(10, 16):  # flip a few labels: the quick model should dispute them
        wrong = "negative" if rows[i]["label"] == "positive" else "positive"
        rows[i] = {"text": rows[i]["text"], "label": wrong}
        flipped.append(i + 1)
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    result = audit({"train": read_rows(path, lenient=True)}, "labelled_text")
    assert _lines(result, "near_duplicates") & {301, 302}
    noisy = _lines(result, "label_noise")
    assert len(noisy & set(flipped)) >= 4, (noisy, flipped)
    assert len(noisy - set(flipped)) <= 2


def test_clean_data_has_no_errors_or_warnings(cls_data, tiny_bert):
    result = audit({"train": read_rows(cls_data["train"], lenient=True)}, "labelled_text")
    assert not [f for f in result.findings if f.severity in ("error", "warning") and f.check != "duplicates"]


def test_generate_format_findings(tmp_path):
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [ok,
            {"messages": [{"role": "user", "content": "no answer"}]},
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "late system"},
                          {"role": "assistant", "content": "y"}]},
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
            ok]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    result = audit({"train": read_rows(path, lenient=True)}, "chat")
    assert {2, 3, 4} <= _lines(result, "format")
    assert 5 in _lines(result, "empty_text")
    assert 6 in _lines(result, "duplicates")


def test_pii_patterns_and_mask():
    kinds = {k for k, _ in find_pii("mail a.b@shop.example, ip 10.0.0.1, card 4111-1111-1111-1111, tel 0171 234 5678")}
    assert kinds == {"email", "ip_address", "card_number", "phone"}
    assert not find_pii("order 12345 arrived on 2024-05-01 for 19.99 EUR")
    assert "@" in mask("john@example.com") and "john" not in mask("john@example.com")


def test_cli_json_exit_code_and_fix(broken_classify, tmp_path):
    train, test = broken_classify
    before = train.read_bytes()
    r = subprocess.run([*TUNELINE, "data", "check", str(train), "--test", str(test), "--json",
                        "--fix", str(tmp_path / "clean")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    report = json.loads(r.stdout)
    assert report["rows"]["train"] == 74
    checks = {f["check"] for f in report["findings"]}
    assert {"invalid_rows", "empty_text", "duplicates", "leakage", "pii", "encoding"} <= checks
    for f in report["findings"]:
        assert {"check", "severity", "count", "examples"} <= set(f)
    assert train.read_bytes() == before  # the input is never touched
    cleaned = read_rows(tmp_path / "clean" / "train.jsonl")
    dropped = [json.loads(l) for l in (tmp_path / "clean" / "dropped.jsonl").read_text().splitlines()]
    dropped_lines = {d["line"] for d in dropped if d["file"] == str(train)}
    assert {61, 62, 63, 64, 65} <= dropped_lines
    assert len(cleaned) == 74 - len(dropped_lines)
    ok = subprocess.run([*TUNELINE, "data", "check", str(tmp_path / "clean" / "train.jsonl")],
                        capture_output=True, text=True, timeout=300)
    assert "invalid_rows" not in ok.stdout and "empty_text" not in ok.stdout


def test_training_runs_the_audit(tiny_recipe, tmp_path):
    import tuneline

    result = tuneline.train(tiny_recipe("full", epochs=1))
    saved = json.loads((result.path / "audit.json").read_text())
    assert set(saved) == {"rows", "findings"} and saved["rows"]["train"] > 0


def test_a_contact_in_many_rows_is_an_organisations_not_personal_data(tmp_path):
    rows = synthetic_rows(40, 8)
    for i in range(0, 30, 5):  # the shop's own address in 6 answers
        rows[i]["text"] += " write to support@shop.example for help"
    rows[33]["text"] += " my mail is jane.doe@mail.example"  # a person's, once
    result = audit({"train": write_jsonl(tmp_path / "t.jsonl", rows)}, "labelled_text", label_noise=False)
    counts = _counts(result)
    assert counts["pii"] == 1 and _lines(result, "pii") == {34}
    shared = next(f for f in result.findings if f.check == "shared_contact")
    assert shared.severity == "info" and shared.examples[0]["rows"] == 6
    assert "support" not in json.dumps(shared.examples)  # still masked


@pytest.mark.parametrize("truncation, said", [("middle", "from the middle of the prompt"),
                                              ("left", "the start of the prompt"),
                                              ("drop", "the whole row")])
def test_chat_length_check_says_what_the_recipes_truncation_cuts(truncation, said, tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    long_turn = "summarise this: " + " ".join(["the shipment arrived late again"] * 40)
    rows = [{"messages": [{"role": "user", "content": long_turn}, {"role": "assistant", "content": "It was late."}]}]
    result = audit({"train": write_jsonl(tmp_path / "c.jsonl", rows)}, "chat",
                   tokenizer=AutoTokenizer.from_pretrained(str(tiny_llama)), max_length=64, truncation=truncation)
    found = [e for f in result.findings if f.check in ("format", "too_long") for e in f.examples]
    assert found and said in found[0]["cut"], found
