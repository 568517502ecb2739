"""A finished run, loaded for prediction and evaluation: `tuneline.load_run(dir)`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data.io import read_rows, resolve_data_path
from .errors import UserError
from .hardware import device_type
from .runs import RunDir, inside
from .tasks import task_of


class LoadedRun:
    def __init__(self, path: str | Path, device: str = "auto"):
        self.run = RunDir(path)
        if not self.run.path.is_dir():
            raise UserError(f"{path}: run folder not found")
        if not self.run.info_file.exists():
            status = self.run.read_manifest().get("status", "unknown")
            raise UserError(f"{path}: this run has no final model (status: {status}); "
                            f"finish it with `tuneline train RECIPE --resume`")
        self.info = json.loads(self.run.info_file.read_text())
        self.recipe = self.run.load_recipe()
        self.task = task_of(self.info)
        self.labels = self.info.get("labels")
        self.model, self.tokenizer = self._load()
        # "auto": the GPU when there is one (predict, evaluate, serve), else the CPU
        self.model.to(device_type() if device == "auto" else device)
        self.model.eval()

    def _load(self):
        from .models import load_tokenizer

        trust = self.info.get("trust_remote_code", False)
        if self.info.get("merged"):
            folder = str(inside(self.run.path, self.info["model_dir"], f"{self.run.info_file}: model_dir"))
            tok = load_tokenizer(folder, trust)
            return self.task.load_trained(folder, trust), tok
        # Adapter that cannot be merged (prompt tuning): base model + adapter.
        from peft import PeftModel

        from .models import resolve_model

        adapter = str(inside(self.run.path, self.info["adapter_dir"], f"{self.run.info_file}: adapter_dir"))
        tok = load_tokenizer(adapter, trust)
        base_path = self.info["base_model_path"]
        if not Path(base_path).exists() and "/" not in base_path:
            base_path = resolve_model(self.info["base_model"]).path
        base = self.task.load_model(base_path, self.recipe, tok, self.labels)
        return PeftModel.from_pretrained(base, adapter), tok

    @property
    def max_length(self) -> int:
        return self.info.get("max_length", 512)

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict]:
        if isinstance(texts, str):
            texts = [texts]
        return self.task.predict(self.model, self.tokenizer, list(texts), self.max_length, batch_size,
                                 options=self.recipe.generate, system_prompt=self.recipe.generate.system_prompt)

    def generate(self, messages: list[dict] | list[list[dict]], batch_size: int = 32, **options) -> str | list[str]:
        """Answer a conversation (list of {role, content} ending with a user turn), or a list of them,
        `batch_size` at a time (left-padded, KV-cached); options override the recipe's `generate`."""
        if "chat" not in self.task.serves:
            raise UserError(f"{self.run.path}: generate() needs a run of task generate (this is {self.info['task']})")
        single = bool(messages) and isinstance(messages[0], dict)
        convs = [messages] if single else list(messages)
        from .data.chat import with_system

        convs = [with_system(c, self.recipe.generate.system_prompt) for c in convs]
        opts = self.recipe.generate.model_copy(update=options)
        answers = self.task.generate(self.model, self.tokenizer, convs, opts, batch_size=batch_size,
                                     max_length=self.max_length)
        return answers[0] if single else answers

    def test_data_path(self) -> str:
        manifest = self.run.read_manifest()
        held = manifest.get("held_out", {})
        if "test" in held:
            return str(inside(self.run.path, held["test"], f"{self.run.manifest}: held_out.test"))
        return manifest["data"]["test"]["path"]

    def evaluate(self, data: str | Path | None = None) -> dict:
        path = Path(data) if data else Path(self.test_data_path())
        if data:
            path = resolve_data_path(str(data), None, "--data")
        rows = read_rows(path)
        encoded = self.task.encode_rows(rows, self.recipe, self.tokenizer, self.labels)
        device = next(self.model.parameters()).device
        from .evaluation.suite import evaluate_model

        result, self.last_predictions = evaluate_model(self.task, self.model, self.tokenizer, encoded, self.recipe,
                                                       self.info, device, split=str(path))
        return result


def load_run(path: str | Path, device: str = "auto") -> LoadedRun:
    """device: "auto" (a GPU when present), "cpu", "cuda", ..."""
    torch.set_grad_enabled(True)
    return LoadedRun(path, device)
