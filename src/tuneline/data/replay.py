"""Replay against forgetting: `train.replay: {data: FILE, fraction: 0.1}` mixes general text or
general instruction rows into the training rows of a task that tunes a causal language model
(`task.causal_lm`: generate), so the model keeps practising what it could do before while it
learns the task.

- Plain text (a .txt file, or rows with only a `text` column): tokenized, joined with the end-of-
  text token and cut into blocks of train.max_length tokens; every token counts in the loss
  (language modelling, as in pre-training).
- Chat or instruction rows (messages, prompt/completion, Alpaca, ShareGPT): encoded by the task
  like its rows (`task.encode_general`: the model's chat template, loss on the answers) but
  without the task's system prompt, since they stand for the model's general use.

`fraction` is the share of training rows that are replay rows: n_replay = n_task * f / (1 - f),
drawn once with the run's seed (repeated when the file is smaller). The mix is fixed for the
run, so the per-epoch batch order stays a pure function of the seed and resume stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .io import file_sha256, read_rows, resolve_data_path

CHAT_COLUMNS = {"messages", "conversations", "instruction", "prompt", "completion", "output"}


@dataclass
class Replay:
    input_ids: list[list[int]]
    labels: list[list[int]]
    where: list[str]
    source: dict          # path, sha256, rows, pool, fraction, kind: for run.json (and the resume check)

    def mix_into(self, train):
        """The task's encoded training rows with the replay rows appended (batches shuffle them in)."""
        return train.with_rows(self.input_ids, self.labels, self.where)


def text_blocks(texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
    """Texts joined by the end-of-text token, cut into blocks of max_length (the last may be shorter)."""
    # end-of-text between texts; an encoder-style vocabulary (no eos) separates with its [SEP]
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    stream: list[int] = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"]
        if eos is not None:
            stream.append(eos)
    blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    return [b for b in blocks if len(b) >= 8]  # a short tail teaches little


def read_paragraphs(path: Path) -> list[str]:
    """Paragraphs separated by blank lines; a file without blank lines has one per line (WikiText)."""
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    parts = text.split("\n\n") if "\n\n" in text.strip() else text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def _encode_pool(path: Path, recipe, task, tokenizer) -> tuple[list[list[int]], list[list[int]], list[str], str]:
    if path.suffix.lower() in (".txt", ".md"):
        return _language_modelling(read_paragraphs(path), path, recipe, tokenizer)
    rows = read_rows(path)
    cols = set(rows.columns)
    if "text" in cols and not cols & CHAT_COLUMNS:
        texts = [r["text"] for r in rows.records if isinstance(r.get("text"), str) and r["text"].strip()]
        return _language_modelling(texts, path, recipe, tokenizer)
    # the replay file's own format and columns
    general = recipe.model_copy(update={
        "data": recipe.data.model_copy(update={"format": "auto", "text_column": None, "label_column": None})})
    enc = task.encode_general(rows, general, tokenizer)
    return enc.input_ids, enc.labels, enc.where, "chat"


def _language_modelling(texts: list[str], path: Path, recipe, tokenizer):
    """Blocks of text whose every token counts in the loss (labels = ids)."""
    blocks = text_blocks(texts, tokenizer, recipe.train.max_length)
    return blocks, [list(b) for b in blocks], [f"{path.name} block {i + 1}" for i in range(len(blocks))], "text"


def load_replay(recipe, task, tokenizer, base_dir: Path | None, n_task_rows: int) -> Replay:
    cfg = recipe.train.replay
    if not task.causal_lm:
        raise UserError("train.replay: only the generate task trains on text; a classifier has no general "
                        "ability to keep this way (remove train.replay)")
    path = resolve_data_path(cfg.data, base_dir, "train.replay.data")
    ids, labels, where, kind = _encode_pool(path, recipe, task, tokenizer)
    if not ids:
        raise UserError(f"{path}: train.replay.data has no usable text (empty, or every row too short)")
    n = max(1, round(n_task_rows * cfg.fraction / (1 - cfg.fraction)))
    rng = np.random.default_rng(recipe.train.seed)
    if n <= len(ids):
        pick = rng.choice(len(ids), size=n, replace=False).tolist()
    else:  # a small file: every row, as often as needed
        pick = (list(range(len(ids))) * (n // len(ids) + 1))[:n]
        print(f"Replay: {path.name} has {len(ids)} {'blocks' if kind == 'text' else 'rows'}; each is used "
              f"about {n / len(ids):.1f} times", flush=True)
    source = {"path": str(path), "sha256": file_sha256(path), "kind": kind, "rows": n, "pool": len(ids),
              "fraction": cfg.fraction}
    print(f"Replay: {n} {'text blocks' if kind == 'text' else 'chat rows'} from {path.name} mixed into "
          f"{n_task_rows} task rows ({100 * n / (n + n_task_rows):.0f} % of training rows)", flush=True)
    return Replay([ids[i] for i in pick], [labels[i] for i in pick], [where[i] for i in pick], source)
