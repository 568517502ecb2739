"""The local models graders use: judges (score_model, label_model) and sentence encoders (cosine).

Opened only by load_graders, never by check_specs, and once per path: graders that name the
same model share it (a `ModelCache` lives as long as its Graders). Everything stays on the CPU,
as `load_run` leaves models there.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .errors import GraderError

# Words that mark an OpenAI API model name, to say why it cannot load here.
_OPENAI = ("gpt-", "o1", "o3", "o4", "text-embedding")


class ChatJudge:
    """A chat model (a folder, a built-in alias, or a tuneline run of task generate): answers
    conversations greedily."""

    kind = "chat"

    def __init__(self, generate):
        self._generate = generate

    def answers(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        import torch

        with torch.no_grad():
            return list(self._generate(conversations, max_new_tokens))


class ClassifyJudge:
    """A tuneline run of task classify (a reward model): label probabilities for texts."""

    kind = "classify"

    def __init__(self, run):
        self.run = run
        self.labels = list(run.labels or run.model.config.id2label.values())

    def probabilities(self, texts: list[str]) -> list[dict[str, float]]:
        import torch

        with torch.no_grad():
            return [p["scores"] for p in self.run.predict(texts)]


class Encoder:
    """A sentence encoder: mean-pooled last hidden states, L2-normalised."""

    def __init__(self, path: str):
        from transformers import AutoModel

        from ..models import load_tokenizer

        self.tokenizer = load_tokenizer(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str], batch_size: int = 32):
        import torch

        out = []
        limit = min(getattr(self.tokenizer, "model_max_length", 512) or 512, 512)
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=limit,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(out) if out else torch.empty(0)


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "tuneline.json").exists() or (path / "run.json").exists())


def _local(spec: str, base_dir) -> Path | None:
    p = Path(spec).expanduser()
    for c in ([p] if p.is_absolute() else ([Path(base_dir) / p] if base_dir else []) + [p]):
        if c.exists():
            return c.resolve()
    return None


def _hint(spec: str) -> str:
    if spec.lower().startswith(_OPENAI):
        return (f"; {spec!r} is an OpenAI model, which is not available locally: give a tuneline run folder, a "
                f"local chat model folder or a built-in alias instead")
    return ""


@contextmanager
def _named(where: str, spec: str):
    """tuneline's own loading errors ("model: ..."), re-raised under the grader's key path."""
    try:
        yield
    except GraderError:
        raise
    except UserError as e:
        raise GraderError(f"{where}: {str(e).removeprefix('model: ')}{_hint(spec)}") from None


def _open_judge(spec: str, base_dir, where: str):
    with _named(where, spec):
        local = _local(spec, base_dir)
        if local is not None and is_run_folder(local):
            return _run_judge(spec, local, where)
        return _chat_judge(spec, base_dir, where)


def _run_judge(spec: str, folder: Path, where: str):
    from ..inference import load_run

    run = load_run(folder)
    task = run.info.get("task")
    if task == "classify":
        return ClassifyJudge(run)
    if "chat" in run.task.serves:
        return ChatJudge(lambda convs, n: run.generate(convs, max_new_tokens=n, temperature=0.0))
    raise GraderError(f"{where}: {spec} is a tuneline run of task {task}; a judge is a classify run "
                      f"(a reward model) or a generate run (a chat model)")


def _chat_judge(spec: str, base_dir, where: str) -> ChatJudge:
    from ..models import load_tokenizer, resolve_model
    from ..recipe import GenerateOptions
    from ..tasks import get_task

    path = resolve_model(spec, Path(base_dir) if base_dir else None).path
    tok = load_tokenizer(path)
    task = get_task("generate")
    try:
        model = task.load_trained(path).eval()
    except (OSError, ValueError) as e:
        raise GraderError(f"{where}: cannot load {spec!r} as a chat model ({str(e).splitlines()[0][:200]}); give a "
                          f"causal language model folder, a built-in chat alias or a tuneline run{_hint(spec)}") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id

    def generate(convs, n):
        return task.generate(model, tok, convs, GenerateOptions(max_new_tokens=n, temperature=0.0), batch_size=8)

    return ChatJudge(generate)


def _open_encoder(spec: str, base_dir, where: str) -> Encoder:
    from ..models import resolve_model

    with _named(where, spec):
        path = resolve_model(spec, Path(base_dir) if base_dir else None).path
        try:
            return Encoder(path)
        except (OSError, ValueError) as e:
            raise GraderError(f"{where}: cannot load {spec!r} as a sentence encoder "
                              f"({str(e).splitlines()[0][:200]}); give a Transformers encoder folder or minilm-l6") from None


class ModelCache:
    """One loaded model per (role, path), shared by every grader that names it."""

    def __init__(self, base_dir=None):
        self.base_dir = base_dir
        self._models: dict[tuple[str, str], object] = {}

    def _key(self, spec: str) -> str:
        local = _local(spec, self.base_dir)
        return str(local) if local is not None else spec

    def judge(self, spec: str, where: str):
        key = ("judge", self._key(spec))
        if key not in self._models:
            self._models[key] = _open_judge(spec, self.base_dir, where)
        return self._models[key]

    def encoder(self, spec: str, where: str) -> Encoder:
        key = ("encoder", self._key(spec))
        if key not in self._models:
            self._models[key] = _open_encoder(spec, self.base_dir, where)
        return self._models[key]
