"""Tasks: how rows become tensors, which model and head, how to predict, which metrics.

`TASKS` maps a recipe's `task:` value to its `Task` class (the interface: tasks/base.py).
The built-in entries are import paths, loaded on first use: the recipe validates task names
against this registry, and importing every task (torch, pyarrow, the audit) for that would
slow down each command that reads a recipe. A plug-in task registers its class:

    @register_task
    class MyTask(Task):
        name = "mytask"
        ...

An objective (how a task learns: `objective: dpo`) is a subclass of its task's class, in
`OBJECTIVES` as (task name, import path); `sft` is the task class itself. A plug-in objective
registers with `register_objective` (its class sets `name` to the task and `objective`).
"""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Task

TASKS: dict[str, type[Task] | str] = {
    "classify": "tuneline.tasks.classify:ClassifyTask",
    "generate": "tuneline.tasks.generate:GenerateTask",
}


SFT = "sft"  # supervised: the task class itself
OBJECTIVES: dict[str, tuple[str, type[Task] | str]] = {
    "dpo": ("generate", "tuneline.tasks.preference:DPOTask"),
    "simpo": ("generate", "tuneline.tasks.preference:SimPOTask"),
    "orpo": ("generate", "tuneline.tasks.preference:ORPOTask"),
    "kto": ("generate", "tuneline.tasks.kto:KTOTask"),
    "grpo": ("generate", "tuneline.tasks.grpo:GRPOTask"),
}


def register_task(cls: type[Task]) -> type[Task]:
    """Add (or replace) a task; usable as a class decorator."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a task needs a name")
    TASKS[cls.name] = cls
    return cls


def register_objective(cls: type[Task]) -> type[Task]:
    """Add (or replace) an objective of task `cls.name`; usable as a class decorator."""
    if not cls.objective or cls.objective == SFT:
        raise ValueError(f"{cls.__name__}: an objective needs a name other than {SFT!r}")
    OBJECTIVES[cls.objective] = (cls.name, cls)
    return cls


def objective_task(objective: str) -> str | None:
    """The task an objective belongs to (None: `sft`, which every task has)."""
    return None if objective == SFT else OBJECTIVES[objective][0]


def _load(entry):
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def task_class(name: str, objective: str | None = SFT) -> type[Task]:
    """The class of task `name` learning by `objective` (None or "sft": the task's own)."""
    if objective not in (None, SFT):
        entry = OBJECTIVES.get(objective)
        if entry is None or entry[0] != name:
            fits = [o for o, (t, _) in OBJECTIVES.items() if t == name]
            raise UserError(f"objective: {objective!r} is not an objective of task {name!r}; allowed: "
                            f"{', '.join([SFT, *fits])}")
        cls = _load(entry[1])
        OBJECTIVES[objective] = (name, cls)
        return cls
    return _task_class(name)


def _task_class(name: str) -> type[Task]:
    entry = TASKS.get(name)
    if entry is None:
        raise UserError(f"task: unknown {name!r}; allowed: {', '.join(TASKS)}")
    entry = TASKS[name] = _load(entry)
    return entry


def get_task(name: str, objective: str | None = SFT) -> Task:
    return task_class(name, objective)()


def task_of(record) -> Task:
    """The task of a recipe, or of a run's record (run.json, tuneline.json, eval.json: "task" and,
    for objectives other than sft, "objective")."""
    if isinstance(record, dict):
        return get_task(record["task"], record.get("objective"))
    return get_task(record.task, record.objective)


__all__ = ["OBJECTIVES", "SFT", "TASKS", "Task", "get_task", "objective_task", "register_objective",
           "register_task", "task_class", "task_of"]
