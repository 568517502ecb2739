"""Tasks: how rows become tensors, which model and head, how to predict, which metrics.

`TASKS` maps a recipe's `task:` value to its `Task` class (the interface: tasks/base.py).
The built-in entries are import paths, loaded on first use: the recipe validates task names
against this registry, and importing every task (torch, pyarrow, the audit) for that would
slow down each command that reads a recipe. A plug-in task registers its class:

    @register_task
    class MyTask(Task):
        name = "mytask"
        ...
"""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Task

TASKS: dict[str, "type[Task] | str"] = {
    "classify": "tuneline.tasks.classify:ClassifyTask",
    "generate": "tuneline.tasks.generate:GenerateTask",
}


def register_task(cls: type[Task]) -> type[Task]:
    """Add (or replace) a task; usable as a class decorator."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a task needs a name")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    entry = TASKS.get(name)
    if entry is None:
        raise UserError(f"task: unknown {name!r}; allowed: {', '.join(TASKS)}")
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = TASKS[name] = getattr(importlib.import_module(module), attr)
    return entry


def get_task(name: str) -> Task:
    return task_class(name)()


__all__ = ["TASKS", "Task", "get_task", "register_task", "task_class"]
