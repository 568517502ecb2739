"""The run folder: atomic writes, a manifest (run.json), the metrics log, its recipe, the result."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create 0600 / 0700 for their own safety; the files of a run are the user's to
# share, so they get the modes the user's umask gives any new file (0644 / 0755 with umask 022).
UMASK = _umask()
FILE_MODE, DIR_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written folder into place (old one removed only after the new one is complete)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, final_dir)


@contextlib.contextmanager
def staged_dir(final_dir: Path, prefix: str | None = None):
    """Yields a new temporary folder beside `final_dir`; when the block ends without error the
    folder replaces `final_dir` (replace_dir), otherwise it is removed. A full disk or a Ctrl-C
    mid-write never leaves a half-written folder in place or behind.

        with staged_dir(run.model_dir) as tmp:
            model.save_pretrained(tmp)
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=prefix or f".{final_dir.name}."))
    try:
        tmp.chmod(DIR_MODE)
        yield tmp
        replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def inside(base: Path, relative: str, source: str) -> Path:
    """A path a run folder's own files name (model_dir, held-out splits), kept inside that folder:
    a copied or edited run folder must not make us read files elsewhere."""
    from .errors import UserError

    base = Path(base).resolve()
    if not isinstance(relative, str) or not relative:
        raise UserError(f"{source}: expected a path inside the run folder, got {relative!r}")
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise UserError(f"{source}: {relative!r} points outside the run folder {base}; the run folder is "
                        "damaged or was edited by hand; train it again")
    return target


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("tuneline", "torch", "transformers", "peft", "accelerate", "safetensors", "scikit-learn", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class RunDir:
    """Paths and small writers for one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # layout
    recipe = property(lambda self: self.path / "recipe.yaml")
    manifest = property(lambda self: self.path / "run.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_ckpt = property(lambda self: self.path / "checkpoints" / "last")
    best_ckpt = property(lambda self: self.path / "checkpoints" / "best")
    model_dir = property(lambda self: self.path / "model")
    adapter_dir = property(lambda self: self.path / "adapter")
    eval_file = property(lambda self: self.path / "eval.json")
    report = property(lambda self: self.path / "report.html")
    splits = property(lambda self: self.path / "data")
    info_file = property(lambda self: self.path / "tuneline.json")

    def exists(self) -> bool:
        return self.manifest.exists()

    def load_recipe(self):
        """The recipe the run was started with (recipe.yaml), validated."""
        import yaml

        from .recipe import recipe_from_dict

        return recipe_from_dict(yaml.safe_load(self.recipe.read_text()), str(self.recipe))

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text()) if self.manifest.exists() else {}

    def update_manifest(self, **fields: Any) -> dict:
        data = self.read_manifest()
        data.update(fields)
        atomic_write_json(self.manifest, data)
        return data

    def log_metrics(self, record: dict) -> None:
        # One line per event, flushed: a killed run keeps everything logged so far.
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill -9
        return out

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop log lines written after the checkpoint we resume from."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))


@dataclass
class RunResult:
    """What `tuneline.train` returns: the run folder and its eval.json."""

    path: Path
    eval: dict

    @classmethod
    def load(cls, path) -> "RunResult":
        run = RunDir(path)
        return cls(Path(path), json.loads(run.eval_file.read_text()) if run.eval_file.exists() else {})
