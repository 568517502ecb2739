"""The python grader: `def grade(sample, item) -> float` from the recipe, run in this process.

It runs with the user's permissions (there is no sandbox, unlike OpenAI's), which is why
check_specs asks for `trust_code: true` and loading prints a warning. An exception or a
non-number from grade() scores that row 0 and is counted in Graders.errors, so one odd row
does not stop a training run; the first traceback is printed once so the cause is visible.
"""

from __future__ import annotations

import copy
import math
import sys
import traceback
from pathlib import Path

from .base import Grader
from .errors import GraderError
from .spec import check_python_source, is_source_file


class PythonGrader(Grader):
    def __init__(self, spec, where, name, errors, base_dir=None):
        super().__init__(spec, where, name, errors)
        source, filename = spec["source"], f"<{where}.source>"
        if is_source_file(source):
            path = Path(source.strip()).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise GraderError(f"{where}.source: file {str(path)!r} not found (a relative path is read from the "
                                  f"recipe's folder)")
            source, filename = path.read_text(encoding="utf-8"), str(path)
            check_python_source(source, f"{where}.source ({path})")
        print(f"WARNING: {where} runs Python code from the recipe with your permissions (trust_code: true)",
              file=sys.stderr, flush=True)
        namespace = {"__name__": f"tuneline_grader_{name}"}
        try:
            exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - allowed by trust_code: true
        except Exception as e:  # noqa: BLE001 - any error in user code becomes a message
            raise GraderError(f"{where}.source: the code raised while loading: {type(e).__name__}: {e}") from None
        self.grade = namespace["grade"]
        self._shown = False

    def one(self, item: dict, sample: dict) -> float:
        try:
            # copies: the code must not change the row or the answer other graders see
            value = self.grade(copy.deepcopy(sample), copy.deepcopy(item))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"grade() returned {value!r}, not a finite number")
            return float(value)
        except Exception:  # noqa: BLE001 - user code may raise anything; the row scores 0
            if not self._shown:
                self._shown = True
                print(f"WARNING: {self.where}: grade() failed (the row scores 0; later failures are only "
                      f"counted):\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            self.failed()
            return 0.0

    def raw(self, items, samples):
        return [self.one(it, s) for it, s in zip(items, samples)]
