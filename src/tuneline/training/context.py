"""What one run carries from stage to stage: built once by pipeline._train, read by the
loop (training/loop.py) and by the finish (training/finish.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models import ModelSource
    from ..recipe import Recipe
    from ..runs import RunDir
    from ..tasks import Task


@dataclass
class RunContext:
    recipe: "Recipe"
    task: "Task"
    source: "ModelSource"  # the base model: its path and kind
    tokenizer: object
    prepared: object        # the task's Prepared: labels, and the encoded train / validation / test splits
    run: "RunDir"
    precision: str          # resolved: fp32 | bf16 | fp16
    resume: bool            # continue from the run's last checkpoint
    started: float          # the run's first start (a resumed run keeps it): wall_seconds counts from it
    callbacks: list = field(default_factory=list)  # loop.Callback objects (trackers, a search trial's pruner)
