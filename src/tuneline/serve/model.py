"""The served model: one loaded run version, swapped whole when the registry's champion changes.

A batch reads `current` once and computes with that model to the end, so a swap never
cuts a request in two: requests batched before it finish on the old model, later ones get the new.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria

from ..errors import UserError
from ..inference import LoadedRun, load_run


@dataclass(frozen=True)
class GenOptions:
    """Generation settings of one request; requests batch together only when these match."""

    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


@dataclass
class Version:
    id: str
    path: Path
    run: LoadedRun

    @property
    def task(self) -> str:
        return self.run.info["task"]

    @property
    def serves(self) -> tuple[str, ...]:
        return self.run.task.serves


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """OpenAI semantics: the answer ends before the first stop string, which is not returned."""
    cuts = [text.find(s) for s in stop if s and s in text]
    if not cuts:
        return text, False
    return text[:min(cuts)], True


class ServedModel:
    def __init__(self, version_id: str, path: str | Path):
        self._lock = threading.Lock()
        self.current = self._load(version_id, path)
        self.name = Path(path).resolve().name

    @staticmethod
    def _load(version_id: str, path: str | Path) -> Version:
        run = load_run(path)  # predict and generate run under torch.no_grad themselves
        if not run.task.serves:
            raise UserError(f"{path}: a {run.task.name} run has nothing to serve (its task serves no endpoint)")
        if "chat" in run.task.serves:  # set once at load, not by a request on a shared tokenizer
            from ..data.chat import ensure_chat_template

            ensure_chat_template(run.tokenizer)
        return Version(version_id, Path(path), run)

    def swap(self, version_id: str, path: str | Path) -> Version:
        """Load a version fully, then switch to it in one assignment."""
        new = self._load(version_id, path)
        with self._lock:
            old, self.current = self.current, new
        return old

    def run_batch(self, key, items: list) -> tuple[list[dict], str]:
        """The micro-batcher's job: key "classify" labels texts, GenOptions answer conversations."""
        if key == "classify":
            return self.classify(items)
        return self.generate(key, items)

    # -- classify ----------------------------------------------------------------
    def classify(self, texts: list[str]) -> tuple[list[dict], str]:
        v = self.current
        run = v.run
        if "classify" not in v.serves:
            raise ValueError("not a classifier")
        lengths = [len(x) for x in run.tokenizer(texts, truncation=True, max_length=run.max_length)["input_ids"]]
        preds = run.predict(texts, batch_size=max(1, len(texts)))
        for p, n in zip(preds, lengths):
            p["tokens"] = n
        return preds, v.id

    # -- generate ----------------------------------------------------------------
    def prompt_tokens(self, run: LoadedRun, conv: list[dict]) -> int:
        text = run.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        return min(len(run.tokenizer(text, add_special_tokens=False)["input_ids"]), run.max_length)

    def _gen_call(self, run: LoadedRun, convs, opts: GenOptions, cancelled: threading.Event | None = None,
                  **extra) -> list[str]:
        from transformers import StopStringCriteria, StoppingCriteriaList

        options = run.recipe.generate.model_copy(update={
            "max_new_tokens": opts.max_new_tokens, "temperature": opts.temperature, "top_p": opts.top_p})
        criteria = StoppingCriteriaList()
        if opts.stop:
            try:
                criteria.append(StopStringCriteria(run.tokenizer, list(opts.stop)))
            except ValueError:
                # A stop string no token can spell (characters outside the vocabulary): generation
                # cannot stop on it early; the answer is still cut at it afterwards (cut_at_stop).
                pass
        if cancelled is not None:
            criteria.append(_UntilCancelled(cancelled))
        if criteria:
            extra["stopping_criteria"] = criteria
        return run.task.generate(run.model, run.tokenizer, convs, options, batch_size=max(1, len(convs)),
                                 max_length=run.max_length, **extra)

    def generate(self, opts: GenOptions, conversations: list[list[dict]]) -> tuple[list[dict], str]:
        """One result per conversation: text, finish_reason, prompt and completion token counts."""
        v = self.current
        run = v.run
        convs = [self._with_system(run, c) for c in conversations]
        answers = self._gen_call(run, convs, opts)
        out = []
        for conv, text in zip(convs, answers):
            out.append(self._result(run, conv, text, opts))
        return out, v.id

    def _with_system(self, run: LoadedRun, conv: list[dict]) -> list[dict]:
        from ..data.chat import with_system

        return with_system(conv, run.recipe.generate.system_prompt)

    def _result(self, run, conv, text: str, opts: GenOptions) -> dict:
        text, stopped = cut_at_stop(text, opts.stop)
        n_out = len(run.tokenizer(text, add_special_tokens=False)["input_ids"])
        finish = "stop" if stopped or n_out < opts.max_new_tokens else "length"
        return {"text": text, "finish_reason": finish, "prompt_tokens": self.prompt_tokens(run, conv),
                "completion_tokens": n_out}

    def generate_stream(self, conv: list[dict], opts: GenOptions, on_text,
                        cancelled: threading.Event | None = None) -> tuple[list[dict], str]:
        """Generate one answer, calling on_text(piece) as text becomes final. Runs on the model thread.
        Setting `cancelled` (the client left) ends generation at the next token, freeing the thread."""
        from transformers import TextStreamer

        v = self.current
        run = v.run
        conv = self._with_system(run, conv)

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    on_text(text)

        streamer = _Streamer(run.tokenizer, skip_prompt=True, skip_special_tokens=True)
        text = self._gen_call(run, [conv], opts, cancelled, streamer=streamer)[0]
        return [self._result(run, conv, text, opts)], v.id


class _UntilCancelled(StoppingCriteria):
    """Fires for every sequence once the event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
