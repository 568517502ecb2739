"""Data larger than memory: the token-cache path trains exactly like the in-memory one, names
bad lines, reuses its cache and rebuilds it when the file changes, and resumes exactly."""

import json
import random

import numpy as np
import pytest
import torch

import tuneline
from tuneline.training import faults
from tuneline.data import streaming, token_cache
from tuneline.data.batching import epoch_batches
from tuneline.errors import UserError
from tuneline.training.loop import Callback
from tuneline.models import load_tokenizer
from tuneline.training.pipeline import load_splits
from tuneline.recipe import recipe_from_dict
from tuneline.tasks import get_task

from conftest import synthetic_rows, write_jsonl, write_recipe


def _metrics(run) -> list[tuple]:
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["type"], r["step"], r.get("loss")) for r in recs]


def _recipe(task, model, train_file, **data) -> "tuneline.Recipe":
    return recipe_from_dict({"task": task, "model": str(model), "data": {"train": str(train_file), **data},
                             "train": {"max_length": 32, "seed": 3}})


def _prepared(recipe, tokenizer):
    task = get_task(recipe.task)
    splits, _ = load_splits(recipe, None, task, tokenizer)
    return splits, task.prepare(splits, recipe, tokenizer)


@pytest.mark.parametrize("task", ["classify", "generate"])
def test_streamed_batches_equal_in_memory(task, tmp_path, tiny_bert, tiny_llama):
    """Same held-out rows, same training rows in the same order, same padded batches."""
    model = tiny_bert if task == "classify" else tiny_llama
    rows = synthetic_rows(300, 5) if task == "classify" else [
        {"prompt": f"say {w} " * random.Random(i).randint(1, 12), "completion": f"{w} it is"}
        for i, w in enumerate(["red", "green", "blue", "tea", "milk"] * 60)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    tok = load_tokenizer(str(model))
    t = get_task(task)
    mem_splits, mem = _prepared(_recipe(task, model, path, streaming=False), tok)
    st_splits, st = _prepared(_recipe(task, model, path, streaming=True), tok)
    assert isinstance(st_splits.train, streaming.StreamedRows)
    for name in ("validation", "test"):
        assert getattr(mem_splits, name).records == getattr(st_splits, name).records
        assert getattr(mem_splits, name).lines == getattr(st_splits, name).lines
        assert getattr(mem_splits, name).path == getattr(st_splits, name).path
    assert mem.labels == st.labels
    assert list(mem.train.lengths) == st.train.lengths.tolist() and len(mem.train) == len(st.train)
    assert list(mem.train.where) == list(st.train.where)
    if task == "generate":
        assert mem.train.truncated == st.train.truncated > 0  # the long prompts were cut
    batches = epoch_batches(mem.train.lengths, 8, 3000, True)
    assert batches == epoch_batches(st.train.lengths, 8, 3000, True)
    for idx in batches:
        a, b = t.collate(mem.train, idx, tok.pad_token_id), t.collate(st.train, idx, tok.pad_token_id)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_training_equals_in_memory_and_resumes(tmp_path, tiny_bert):
    """The same losses step by step; a streamed run stopped at step 4 and resumed ends the same."""
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(200, 1))
    recipe = write_recipe(tmp_path / "recipe.yaml", task="classify", model=str(tiny_bert), method="full",
                          data={"train": "train.jsonl"},
                          train={"max_steps": 8, "lr": 2e-3, "batch_size": 8, "max_length": 32, "log_every": 1,
                                 "seed": 7, "eval_every": 4, "num_threads": 1},
                          eval={"counterfactuals": False})
    memory = tuneline.train(recipe, output=tmp_path / "memory", overrides=["data.streaming=false"])
    streamed = tuneline.train(recipe, output=tmp_path / "streamed", overrides=["data.streaming=true"])
    assert _metrics(memory.path) == _metrics(streamed.path)
    assert memory.eval["tuned"] == streamed.eval["tuned"]
    for split in ("validation", "test"):
        assert (memory.path / "data" / f"{split}.jsonl").read_text() == \
               (streamed.path / "data" / f"{split}.jsonl").read_text()

    class StopAt(Callback):  # Ctrl-C at step 4, as the SIGINT handler would ask
        def on_log(self, trainer, record):
            if record["step"] == 4:
                faults._stop.set()

    out = tmp_path / "resumed"
    with pytest.raises(faults.Interrupted):
        tuneline.train(recipe, output=out, overrides=["data.streaming=true"], callbacks=[StopAt()])
    tuneline.train(recipe, output=out, overrides=["data.streaming=true"], resume=True)
    assert _metrics(out) == _metrics(memory.path)


@pytest.mark.parametrize("bad,message", [
    ('{"text": "fine", "label": \n', "not valid JSON"),
    ('{"text": "fine"}\n', "'label' is missing or empty"),
    ('{"text": 5, "label": "positive"}\n', "'text' must be text"),
])
def test_bad_line_named_deep_in_a_streamed_file(tmp_path, tiny_bert, bad, message):
    lines = [json.dumps(r) + "\n" for r in synthetic_rows(3000, 2)]
    lines[2799] = bad  # line 2800: past the first rows that decide the columns, in the second chunk
    path = tmp_path / "big.jsonl"
    path.write_text("".join(lines))
    recipe = _recipe("classify", tiny_bert, path, streaming=True)
    with pytest.raises(UserError, match=rf"big\.jsonl:2800: .*{message}"):
        load_splits(recipe, None, get_task("classify"), load_tokenizer(str(tiny_bert)))
    assert not list(token_cache.cache_dir().glob("*.tmp"))  # no half-written cache left


def test_bad_chat_line_named(tmp_path, tiny_llama):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(2500)]
    rows[2199] = {"prompt": "q", "completion": "  "}
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    with pytest.raises(UserError, match=r"chats\.jsonl:2200: .*empty"):
        load_splits(_recipe("generate", tiny_llama, path, streaming=True), None, get_task("generate"),
                    load_tokenizer(str(tiny_llama)))


def test_cache_reused_then_rebuilt_when_the_file_changes(tmp_path, tiny_bert, capsys):
    path = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(120, 3))
    tok = load_tokenizer(str(tiny_bert))
    recipe = _recipe("classify", tiny_bert, path, streaming=True)
    first, _ = load_splits(recipe, None, get_task("classify"), tok)
    built = first.train.file.path
    assert "tokenised in" in capsys.readouterr().out
    stamp = built.stat().st_mtime_ns
    again, _ = load_splits(recipe, None, get_task("classify"), tok)
    assert again.train.file.path == built and built.stat().st_mtime_ns == stamp
    assert "from the token cache" in capsys.readouterr().out

    write_jsonl(path, synthetic_rows(130, 4))  # edited: a new key, the stale cache removed
    changed, _ = load_splits(recipe, None, get_task("classify"), tok)
    assert changed.train.file.path != built and not built.exists()
    assert len(changed.train.file) == 130 and "tokenised in" in capsys.readouterr().out
    # another max_length is another encoding: a cache of its own beside this one
    longer = _recipe("classify", tiny_bert, path, streaming=True)
    longer.train.max_length = 16
    other, _ = load_splits(longer, None, get_task("classify"), tok)
    assert other.train.file.path != changed.train.file.path and changed.train.file.path.exists()


def test_auto_streams_only_large_files(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(150, 1))
    data = recipe_from_dict({"task": "classify", "model": "m", "data": {"train": str(path)}}).data
    assert not streaming.use_streaming(data, path)  # small: the in-memory path
    monkeypatch.setattr(streaming, "STREAM_ROWS", 100)
    assert streaming.use_streaming(data, path)  # more rows than the threshold
    data.max_rows = 50
    assert not streaming.use_streaming(data, path)  # only 50 of them are used
    data.streaming = True
    assert streaming.use_streaming(data, path)
    monkeypatch.setattr(streaming, "STREAM_ROWS", 200_000)
    monkeypatch.setattr(streaming, "STREAM_BYTES", 1000)
    data.max_rows, data.streaming = None, "auto"
    assert streaming.use_streaming(data, path)  # larger than the size threshold


def test_parallel_tokenising_writes_the_same_file(tmp_path, tiny_bert):
    path = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(500, 6))
    tok = load_tokenizer(str(tiny_bert))
    one = _recipe("classify", tiny_bert, path, streaming=True, num_proc=1)
    splits, _ = load_splits(one, None, get_task("classify"), tok)
    serial = splits.train.file.table
    splits.train.file.path.unlink()
    token_cache.CHUNK_ROWS, saved = 64, token_cache.CHUNK_ROWS  # several chunks in flight
    try:
        two = _recipe("classify", tiny_bert, path, streaming=True, num_proc=2)
        splits, _ = load_splits(two, None, get_task("classify"), tok)
    finally:
        token_cache.CHUNK_ROWS = saved
    assert splits.train.file.meta["workers"] == 2
    assert splits.train.file.table.column("input_ids").to_pylist() == serial.column("input_ids").to_pylist()
    assert np.array_equal(splits.train.file.lines, np.arange(1, 501))


def test_iter_records_matches_read_rows_for_every_format(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuneline.data.io import iter_records, read_rows, read_rows_at

    rows = synthetic_rows(30, 8)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" + ("\n" if i % 7 == 0 else "") for i, r in enumerate(rows)))
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("text,label\n" + "".join(f'"{r["text"]}\nmore",{r["label"]}\n' for r in rows))
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    for path in (jsonl, csv_file, parquet, folder):
        whole = read_rows(path)
        assert list(iter_records(path, batch_rows=7)) == list(zip(whole.lines, whole.records)), path
        some = read_rows_at(path, whole.lines[3::5])
        assert some.lines == whole.lines[3::5] and some.records == whole.records[3::5]
