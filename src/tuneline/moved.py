"""Module names from before the training/ folder existed, kept importable for scripts written then
(the project's GPU check patches `tuneline.loop.Trainer` and `tuneline.distributed.init`).

An old name imports as the very module object of its new name, not a copy, so what a script patches on
it is what the code runs. A meta-path finder rather than a stub file per name: the moves stay one table.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "tuneline.pipeline": "tuneline.training.pipeline",
    "tuneline.loop": "tuneline.training.loop",
    "tuneline.distributed": "tuneline.training.distributed",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # already executed under its new name; importlib has just set __spec__ to the old name's: give it back
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
