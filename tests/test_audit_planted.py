"""The audit against defects planted at known lines (benchmarks/audit_planted.py, small sizes),
streaming with bounded memory, template overflow, near duplicates and PII formats."""

import importlib.util
import json
import random
import tracemalloc
from pathlib import Path

import pytest

from tuneline.data.audit import audit, find_pii, findings
from tuneline.data.io import read_rows

from conftest import ROOT, synthetic_rows, write_jsonl

_spec = importlib.util.spec_from_file_location("audit_planted", ROOT / "benchmarks" / "audit_planted.py")
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)


@pytest.fixture
def all_examples(monkeypatch):
    monkeypatch.setattr(findings, "MAX_EXAMPLES", 10**9)  # every line, to score recall


def _recall(result, expected, train, test):
    got = planted.named_lines(result, {"train": str(train), "test": str(test)})
    return {check: len(lines & got.get(check, set())) / len(lines) for check, lines in expected.items()}


def _chats(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = "order refund parcel invoice account password delivery address payment card store help".split()
    out = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
        out.append({"messages": [{"role": "user", "content": f"question {i}: {q}"},
                                 {"role": "assistant", "content": a}]})
    return out


def test_planted_defects_classify(tmp_path, tiny_bert, all_examples):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    train, test = synthetic_rows(600, 11), synthetic_rows(60, 12)
    p_train, p_test, expected = planted.plant(train, test, "classify", 6, 64, 0, tmp_path)
    result = audit({"train": p_train, "test": p_test}, "labelled_text", tokenizer=tok, max_length=64)
    recall = _recall(result, expected, p_train, p_test)
    for check in ("invalid_rows", "empty_text", "encoding", "duplicates", "conflicting_labels", "pii", "too_long"):
        assert recall[check] == 1.0, (check, recall)
    # short rows: two small edits of a five-word row can fall below the similarity threshold
    assert recall["near_duplicates"] >= 0.8 and recall["leakage"] >= 0.8, recall
    assert recall["label_noise"] >= 0.5, recall


def test_planted_defects_chats(tmp_path, tiny_llama, all_examples):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    train, test = _chats(300, 1), _chats(30, 2)
    p_train, p_test, expected = planted.plant(train, test, "generate", 6, 64, 0, tmp_path)
    result = audit({"train": p_train, "test": p_test}, "chat", tokenizer=tok, max_length=64)
    recall = _recall(result, expected, p_train, p_test)
    for check in ("invalid_rows", "empty_text", "encoding", "duplicates", "conflicting_labels", "pii", "format",
                  "too_long", "leakage"):
        assert recall[check] == 1.0, (check, recall)
    assert recall["near_duplicates"] >= 0.8, recall


def test_template_overflow_is_a_format_finding(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    long = "word " * 80
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "summarise"}, {"role": "assistant", "content": long}]},  # 2
            {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "short"}]},      # 3
            {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "ok"},          # 4
                          {"role": "user", "content": "and now?"}, {"role": "assistant", "content": "done"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    result = audit({"train": path}, "chat", tokenizer=tok, max_length=48)
    fmt = {e["line"]: e for f in result.findings if f.check == "format" for e in f.examples}
    long_rows = {e["line"]: e for f in result.findings if f.check == "too_long" for e in f.examples}
    assert set(fmt) == {2, 3} and set(long_rows) == {4}
    assert fmt[2]["tokens"] > 48 and fmt[2]["answer_tokens"] > 40 and "final answer" in fmt[2]["cut"]
    assert "prompt" in fmt[3]["cut"]
    assert "history" in long_rows[4]["cut"]
    assert all(f.severity == "warning" for f in result.findings if f.check == "format")


def test_near_duplicates_small_edits_and_leakage(tmp_path, all_examples):
    rows = synthetic_rows(100, 3)
    rows.append({"text": "the blender arrived on monday and crushes ice well", "label": "positive"})   # 101
    rows.append({"text": "the blender arived on monday and crushes ice well", "label": "positive"})    # 102 typo
    rows.append({"text": "a completely different sentence about shipping boxes", "label": "neutral"})  # 103
    test = [{"text": "the blender arrived on tuesday and crushes ice well", "label": "positive"}]      # near leak
    train_p, test_p = write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "v.jsonl", test)
    result = audit({"train": train_p, "test": test_p}, "labelled_text", label_noise=False)
    near = [e for f in result.findings if f.check == "near_duplicates" for e in f.examples]
    assert any(e["line"] == 102 and e["similar_to"] == 101 and e["similarity"] >= 0.8 for e in near)
    assert not any(e["line"] == 103 for e in near)
    leak = [e for f in result.findings if f.check == "leakage" for e in f.examples]
    assert [(e["line"], e["kind"]) for e in leak] == [(1, "near")] and leak[0]["train_line"] in (101, 102)


def test_streamed_file_equals_rows_in_memory(broken_files):
    train, test = broken_files
    streamed = audit({"train": train, "test": test}, "labelled_text")
    in_memory = audit({"train": read_rows(train, lenient=True), "test": read_rows(test, lenient=True)}, "labelled_text")
    assert streamed.as_dict() == in_memory.as_dict()
    assert streamed.drop == in_memory.drop


@pytest.fixture
def broken_files(tmp_path):
    rows = [json.dumps(r) for r in synthetic_rows(80, 4)]
    rows[5] = '{"text": "cut short'
    rows[9] = json.dumps({"text": "  ", "label": "positive"})
    rows.append(rows[3])
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(rows) + "\n")
    return train, write_jsonl(tmp_path / "test.jsonl", synthetic_rows(20, 5) + [json.loads(rows[2])])


def _traced_peak(path: Path) -> int:
    tracemalloc.start()
    audit({"train": path}, "labelled_text", label_noise=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_grows_far_slower_than_the_rows(tmp_path):
    """The rows are not held: the peak grows by well under 1 KB per row (the records as dicts: ~2-3 KB)."""
    rng = random.Random(6)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(3000)]

    def rows(n):  # varied sentences with a 400-character field the audit does not read
        return [{"text": " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 30))), "label": f"l{i % 3}",
                 "extra": "x" * 400} for i in range(n)]

    small = write_jsonl(tmp_path / "small.jsonl", rows(500))
    big = write_jsonl(tmp_path / "big.jsonl", rows(3000))
    _traced_peak(small)  # imports and caches out of the measurement
    growth = (_traced_peak(big) - _traced_peak(small)) / 2500
    print(f"{growth:.0f} bytes per row")
    assert growth < 1024, f"{growth:.0f} bytes per row"


def test_label_noise_on_a_bounded_sample(tmp_path, monkeypatch):
    from tuneline.data.audit import label_noise

    monkeypatch.setattr(label_noise, "MAX_ROWS", 300)
    rows = synthetic_rows(900, 8)
    for i in range(0, 900, 60):
        rows[i] = {"text": rows[i]["text"], "label": "negative" if rows[i]["label"] == "positive" else "positive"}
    result = audit({"train": write_jsonl(tmp_path / "t.jsonl", rows)}, "labelled_text")
    f = next(f for f in result.findings if f.check == "label_noise")
    assert "sample of 300 of 900 train rows" in f.message


def test_pii_formats():
    for text, kind in [("call +14155550132", "phone"), ("+33 1 23 45 67 89", "phone"), ("07700 900123", "phone"),
                       ("+49 30 1234567", "phone"), ("host 2001:db8::1 down", "ip_address"),
                       ("fe80::1ff:fe23:4567:890a", "ip_address"), ("amex 3782 822463 10005", "card_number")]:
        assert kind in {k for k, _ in find_pii(text)}, text
    for clean in ("at 12:30:45 on 2020-01-01", "years 1998 2004 2011", "std::vector<int>", "order 12345 for 19.99"):
        assert not find_pii(clean), clean


def test_label_noise_sample_keeps_a_character_budget(monkeypatch):
    from tuneline.data.audit import label_noise
    from tuneline.data.audit.items import Item

    monkeypatch.setattr(label_noise, "MAX_SAMPLE_CHARS", 10_000)
    sample = label_noise.Reservoir(size=1000)
    for i in range(20_000):
        sample.add(Item("train", "f", i + 1, "x" * 50, "a"))
    lines = [r[2] for r in sample.sample()]
    assert len(lines) == 200 and sample.chars <= 10_000
    assert 7_000 < sum(lines) / len(lines) < 13_000  # spread over the whole file, not its start
