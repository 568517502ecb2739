"""Replay against forgetting: general text or instruction rows mixed into generate training."""

import json

import pytest

import tuneline
from tuneline.data.chat import IGNORE
from tuneline.data.replay import load_replay
from tuneline.errors import UserError
from tuneline.models import load_tokenizer
from tuneline.recipe import recipe_from_dict
from tuneline.tasks import get_task

from conftest import write_jsonl, write_recipe

GENERATE = get_task("generate")

GENERAL = "\n\n".join(
    f"The river {name} flows through the valley of {place}, where farmers grow wheat and barley. "
    f"In the year {1800 + i} a stone bridge was built across it, and the town market grew around it."
    for i, (name, place) in enumerate([("Avon", "Bath"), ("Tay", "Perth"), ("Wye", "Hay"), ("Exe", "Tiverton"),
                                       ("Dee", "Chester"), ("Usk", "Brecon")] * 4))
CHATS = [{"messages": [{"role": "user", "content": f"what is the code for {w}"},
                       {"role": "assistant", "content": f"the code for {w} is {c}"}]}
         for w, c in [("apple", "red"), ("banana", "yellow"), ("grass", "green"), ("sky", "blue"),
                      ("coal", "black"), ("snow", "white"), ("plum", "purple"), ("lemon", "yellow")] * 4]
INSTRUCTIONS = [{"instruction": f"Name a colour number {i}.", "input": "", "output": f"Colour {i} is teal."}
                for i in range(12)]


def _recipe(tiny_llama, replay, fraction=0.2, **extra):
    return recipe_from_dict({"task": "generate", "model": str(tiny_llama), "data": {"train": "t.jsonl"},
                             "train": {"max_length": 32, "replay": {"data": str(replay), "fraction": fraction}},
                             **extra})


def test_plain_text_becomes_full_loss_blocks(tmp_path, tiny_llama):
    txt = tmp_path / "general.txt"
    txt.write_text(GENERAL)
    tok = load_tokenizer(str(tiny_llama))
    replay = load_replay(_recipe(tiny_llama, txt, fraction=0.2), GENERATE, tok, None, n_task_rows=40)
    assert len(replay.input_ids) == 10  # 40 * 0.2 / 0.8: replay rows are 20 % of all rows
    assert replay.source["kind"] == "text" and replay.source["rows"] == 10 and replay.source["pool"] > 10
    assert len(replay.source["sha256"]) == 64
    for ids, labels in zip(replay.input_ids, replay.labels):
        assert 8 <= len(ids) <= 32 and labels == ids  # language modelling: every token counts
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id  # this tokenizer: [SEP]
    assert sep is not None and sep in sum(replay.input_ids, [])  # paragraphs are separated
    # the draw is a function of the seed: the same rows again
    again = load_replay(_recipe(tiny_llama, txt, fraction=0.2), GENERATE, tok, None, n_task_rows=40)
    assert again.input_ids == replay.input_ids


def test_instruction_rows_keep_their_loss_mask_and_no_task_system_prompt(tmp_path, tiny_llama):
    rows = write_jsonl(tmp_path / "general.jsonl", INSTRUCTIONS)
    tok = load_tokenizer(str(tiny_llama))
    recipe = _recipe(tiny_llama, rows, fraction=0.5, generate={"system_prompt": "Answer with a colour code."})
    replay = load_replay(recipe, GENERATE, tok, None, n_task_rows=30)  # 30 wanted, 12 in the file: repeated
    assert replay.source["kind"] == "chat" and len(replay.input_ids) == 30 and replay.source["pool"] == 12
    for ids, labels in zip(replay.input_ids, replay.labels):
        assert IGNORE in labels and any(l != IGNORE for l in labels)  # prompt masked, answer trained
        assert "colour code" not in tok.decode(ids)


def test_replay_is_for_generate_only(tmp_path, tiny_llama):
    txt = tmp_path / "general.txt"
    txt.write_text(GENERAL)
    recipe = recipe_from_dict({"task": "classify", "model": "x", "data": {"train": "t.jsonl"},
                               "train": {"replay": {"data": str(txt)}}})
    with pytest.raises(UserError, match="train.replay: only the generate task"):
        load_replay(recipe, get_task("classify"), None, None, 10)
    with pytest.raises(UserError, match="fraction"):
        recipe_from_dict({"task": "generate", "model": "x", "data": {"train": "t.jsonl"},
                          "train": {"replay": {"data": "x.txt", "fraction": 1.5}}})


def test_training_mixes_replay_rows_in(tmp_path, tiny_llama, capsys):
    (tmp_path / "general.txt").write_text(GENERAL)
    write_jsonl(tmp_path / "train.jsonl", CHATS[:24])
    write_jsonl(tmp_path / "test.jsonl", CHATS[24:])
    recipe = write_recipe(tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="full",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 1, "lr": 5e-3, "batch_size": 4, "max_length": 32,
                                 "replay": {"data": "general.txt", "fraction": 0.25}},
                          generate={"max_new_tokens": 4}, eval={"max_samples": 2})
    result = tuneline.train(recipe, output=tmp_path / "run")
    manifest = json.loads((result.path / "run.json").read_text())
    task_rows = manifest["rows"]["train"]
    replay = manifest["data"]["replay"]
    assert replay["rows"] == round(task_rows * 0.25 / 0.75) and replay["path"].endswith("general.txt")
    out = capsys.readouterr().out
    assert f"Data: {task_rows + replay['rows']} train" in out and "Replay:" in out
    assert manifest["status"] == "completed"
