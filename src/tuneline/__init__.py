"""tuneline: fine-tune a pretrained language model for one task, end to end.

    import tuneline
    result = tuneline.train("examples/reviews/recipe.yaml")
    run = tuneline.load_run(result.path)
    run.predict(["Great blender, crushes ice in seconds."])
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["train", "load_run", "evaluate", "load_recipe", "export_run", "UserError", "RunFailed", "__version__"]

import logging

from . import moved
from .errors import RunFailed, UserError

moved.install()
# PEFT imports bitsandbytes when it is installed (method: qlora), which on CPUs with AVX-512 bf16
# warns that a hub kernel is missing; its plain-torch path serves, so the warning only misleads
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def train(recipe, **kwargs):
    """Run a recipe (path to YAML, or a Recipe) end to end. See `pipeline.train` for options."""
    from .training.pipeline import train as _train

    return _train(recipe, **kwargs)


def load_run(path, device: str = "auto"):
    """Load a finished run folder for `predict(texts)` / `evaluate(data)` / `generate(messages)`,
    on a GPU when there is one (device="auto"), else the CPU."""
    from .inference import load_run as _load_run

    return _load_run(path, device)


def evaluate(run_path, data=None) -> dict:
    """Evaluate a finished run on its test split or on another file; returns the eval.json object."""
    return load_run(run_path).evaluate(data)


def load_recipe(path, overrides=None):
    from .recipe import load_recipe as _load

    return _load(path, overrides)[0]


def export_run(run_path, format, out, **kwargs) -> dict:
    """Export a finished run as hf | gguf | onnx into `out`; returns the manifest. (Not named
    `export`: the subpackage tuneline.export would shadow it once imported.)"""
    from .export import export_run as _export_run

    return _export_run(run_path, format, out, **kwargs)
