import json

import pytest

from tuneline.data.io import read_rows
from tuneline.data.split import split_rows
from tuneline.errors import UserError


def test_jsonl_lines_and_columns(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y", "extra": 1}\n')
    rows = read_rows(p)
    assert len(rows) == 2 and rows.lines == [1, 3] and rows.columns == ["text", "label", "extra"]
    assert rows.where(1) == f"{p}:3"


def test_jsonl_malformed_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        read_rows(p)


def test_jsonl_not_object(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: expected a JSON object"):
        read_rows(p)


def test_csv_and_errors(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('text,label\n"hello, world",pos\nbye,neg\n')
    rows = read_rows(p)
    assert rows.records[0] == {"text": "hello, world", "label": "pos"} and rows.lines == [2, 3]
    bad = tmp_path / "b.csv"
    bad.write_text("text,label\nok,pos\ntoo,many,fields\n")
    with pytest.raises(UserError, match=r"b\.csv:3: more fields"):
        read_rows(bad)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), p)
    rows = read_rows(p)
    assert rows.records == [{"text": "a", "label": 0}, {"text": "b", "label": 1}]


def test_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": ["x", "y", "x"]}).save_to_disk(str(tmp_path / "ds"))
    rows = read_rows(tmp_path / "ds")
    assert len(rows) == 3 and rows.columns == ["text", "label"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="save_to_disk"):
        read_rows(tmp_path / "plain")


def test_unknown_format_and_empty(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text("<x/>")
    with pytest.raises(UserError, match="unknown data format"):
        read_rows(p)
    e = tmp_path / "e.jsonl"
    e.write_text("\n")
    with pytest.raises(UserError, match="no rows"):
        read_rows(e)
    with pytest.raises(UserError, match="not found"):
        read_rows(tmp_path / "missing.jsonl")


def test_not_utf8(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="UTF-8"):
        read_rows(p)


def test_stratified_seeded_split(tmp_path):
    p = tmp_path / "a.jsonl"
    recs = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = read_rows(p)
    strata = [r["label"] for r in rows.records]
    keep, held = split_rows(rows, 0.2, 3, strata, "test")
    keep2, held2 = split_rows(rows, 0.2, 3, strata, "test")
    assert [r["text"] for r in held.records] == [r["text"] for r in held2.records]
    assert len(held) == 40 and sum(r["label"] == "b" for r in held.records) == 10
    assert not {r["text"] for r in keep.records} & {r["text"] for r in held.records}


def test_too_few_rows_to_hold_out_a_split_is_a_clear_error(tmp_path):
    import pytest

    from tuneline.data.io import read_rows
    from tuneline.data.split import split_rows
    from tuneline.errors import UserError

    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(UserError, match=r"t.jsonl: 1 rows, too few to hold out a test split.*data.test"):
        split_rows(read_rows(tmp_path / "t.jsonl"), 0.1, 0, None, "test")
