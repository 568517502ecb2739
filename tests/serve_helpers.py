"""Shared by the serve tests: tiny finished runs, a live uvicorn server in a thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

import tuneline
from conftest import synthetic_rows, write_jsonl, write_recipe

CHATS = [
    {"messages": [{"role": "user", "content": f"what is the code for {w}"},
                  {"role": "assistant", "content": f"the code for {w} is {c}"}]}
    for w, c in [("apple", "red"), ("banana", "yellow"), ("grass", "green"), ("sky", "blue"), ("coal", "black"),
                 ("snow", "white"), ("plum", "purple"), ("orange", "orange"), ("lemon", "yellow"), ("rose", "red")] * 3
]


def train_classify_run(folder, tiny_bert, rows=None, epochs=4):
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", rows or synthetic_rows(150, 1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(30, 2))
    recipe = write_recipe(folder / "recipe.yaml", task="classify", model=str(tiny_bert), method="full",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          # the seed matters to the retrain tests (promote a real correction, refuse noise):
                          # with this tiny random BERT they passed for 4 of 5 seeds tried, 4 of 6 for the
                          # systematic one alone with torch's dropout as with ours
                          train={"epochs": epochs, "lr": 2e-3, "batch_size": 8, "max_length": 32, "seed": 3},
                          drift={"min_requests": 5, "window": 50},
                          output=str(folder / "run"))
    return tuneline.train(recipe).path


_TRAINED: dict = {}


def shared_classify_run(tmp_path_factory, tiny_bert):
    """One tiny classifier run for all serve tests of a session (training it is most of their time).
    Tests that change a run folder (retrain) work on a copy."""
    if "classify" not in _TRAINED:
        _TRAINED["classify"] = train_classify_run(tmp_path_factory.mktemp("serve_cls"), tiny_bert)
    return _TRAINED["classify"]


def train_generate_run(folder, tiny_llama):
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", CHATS[:24])
    write_jsonl(folder / "test.jsonl", CHATS[24:])
    recipe = write_recipe(folder / "recipe.yaml", task="generate", model=str(tiny_llama), method="lora",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 1, "lr": 5e-3, "batch_size": 4, "max_length": 64},
                          generate={"max_new_tokens": 8}, output=str(folder / "run"))
    return tuneline.train(recipe).path


def shared_generate_run(tmp_path_factory, tiny_llama):
    """One tiny LoRA chat run for the serve tests of a session (read-only, like the classifier's)."""
    if "generate" not in _TRAINED:
        _TRAINED["generate"] = train_generate_run(tmp_path_factory.mktemp("serve_gen"), tiny_llama)
    return _TRAINED["generate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a thread of the test process: a real HTTP server, without a second model load."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
