"""The run being exported: its loaded model, its files, and sample inputs from its test split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..data.io import read_rows
from ..errors import UserError
from ..inference import LoadedRun, load_run


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Source:
    loaded: LoadedRun

    @property
    def path(self) -> Path:
        return self.loaded.run.path

    @property
    def info(self) -> dict:
        return self.loaded.info

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def decoding(self) -> dict:
        """The run's own options section (a chat task's decoding: answer length, system prompt...)."""
        return task_options(self.loaded.task, self.info)

    @property
    def model_dir(self) -> Path | None:
        return self.path / self.info["model_dir"] if self.info.get("model_dir") else None

    @property
    def adapter_dir(self) -> Path | None:
        return self.path / self.info["adapter_dir"] if self.info.get("adapter_dir") else None

    def require_merged(self, what: str) -> Path:
        """The merged plain-Transformers model folder; prompt tuning has none."""
        if not self.info.get("merged") or self.model_dir is None or not self.model_dir.is_dir():
            raise UserError(f"{self.path}: {what} needs a merged model, and this run has only an adapter "
                            f"(method {self.info.get('method')}: virtual prompt tokens cannot be folded into the "
                            f"weights); the adapter is in {self.adapter_dir}")
        return self.model_dir

    def eval_result(self) -> dict | None:
        f = self.loaded.run.eval_file
        return json.loads(f.read_text()) if f.exists() else None

    def test_rows(self):
        return read_rows(self.loaded.test_data_path())

    def sample_token_ids(self, n: int, max_tokens: int) -> list[list[int]]:
        """Token ids of the first n test rows, as the run's task encodes them (for generate the whole
        conversation with its reference answer, rendered with the chat template), cut to max_tokens."""
        encoded = self.loaded.task.encode_rows(self.test_rows(), self.loaded.recipe, self.loaded.tokenizer,
                                               self.loaded.labels)
        return [ids[:max_tokens] for ids in encoded.input_ids[:n]]

    def file_hashes(self) -> dict[str, str]:
        """sha256 of what defines the exported model: weights, tokenizer, adapter, recipe, run info."""
        out = {}
        for name in ("recipe.yaml", "tuneline.json", "eval.json", "run.json"):
            f = self.path / name
            if f.is_file():
                out[name] = sha256_file(f)
        for folder in (self.model_dir, self.adapter_dir):
            if folder is not None and folder.is_dir():
                for f in sorted(folder.iterdir()):
                    if f.is_file():
                        out[f"{folder.name}/{f.name}"] = sha256_file(f)
        return out


def open_source(run: str | Path) -> Source:
    return Source(load_run(run, device="cpu"))  # exporters read and convert the weights on the CPU


def task_options(task, info: dict) -> dict:
    """A task's options section as the run's tuneline.json keeps it; {} for a task without one."""
    return (info.get(task.options_section) or {}) if task.options_section else {}
