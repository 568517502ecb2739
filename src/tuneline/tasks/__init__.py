"""Tasks: how rows become tensors, which head, how to predict, which metrics."""

from __future__ import annotations

from ..errors import UserError


def get_task(name: str):
    if name == "classify":
        from .classify import ClassifyTask

        return ClassifyTask()
    if name == "generate":
        try:
            from .generate import GenerateTask
        except ImportError:
            raise UserError("task: 'generate' is not available in this version yet; use task: classify") from None
        return GenerateTask()
    raise UserError(f"task: unknown {name!r}; allowed: classify, generate")
