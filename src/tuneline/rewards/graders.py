"""load_graders and Graders: build the grader tree from checked definitions, and score rows.

A row's combined score is the weighted mean (key `weight`, default 1) of the top-level graders'
normalised scores; it passes when every top-level grader passes (see base.Grader.passed).
"""

from __future__ import annotations

from .base import Grader
from .basic import Json, Number, Regex, StringCheck, TextSimilarity
from .code import PythonGrader
from .errors import GraderError
from .judges import LabelModel, ScoreModel
from .local_models import ModelCache
from .multi import Multi
from .spec import at, check_specs, top_name
from .templates import make_sample


def _build(spec: dict, where: str, name: str, errors: dict, models: ModelCache, base_dir) -> Grader:
    kind = spec["type"]
    if kind == "multi":
        children = {key: _build(sub, f"{where}.graders.{key}", f"{name}.{key}", errors, models, base_dir)
                    for key, sub in spec["graders"].items()}
        return Multi(spec, where, name, errors, children)
    if kind == "python":
        return PythonGrader(spec, where, name, errors, base_dir)
    if kind in ("text_similarity", "score_model", "label_model"):
        cls = {"text_similarity": TextSimilarity, "score_model": ScoreModel, "label_model": LabelModel}[kind]
        return cls(spec, where, name, errors, models)
    return {"string_check": StringCheck, "regex": Regex, "json": Json, "number": Number}[kind](
        spec, where, name, errors)


class Graders:
    """Loaded graders. `names`: the top-level graders' names; `weights`: their weights;
    `errors`: {grader name: rows it could not grade (scored 0)}, nested graders as parent.child."""

    def __init__(self, graders: list[Grader], weights: list[float], errors: dict[str, int], models: ModelCache):
        self.graders, self.weights, self.errors, self._models = graders, weights, errors, models
        self.names = [g.name for g in graders]

    def __len__(self) -> int:
        return len(self.graders)

    def score(self, item: dict, output_text: str) -> dict:
        return self.score_many([item], [output_text])[0]

    def score_many(self, items: list[dict], outputs: list[str]) -> list[dict]:
        """One result per row: {"score": 0..1 combined, "passed": bool, "by_grader": {name: 0..1}}.
        Model graders see all rows at once (batched). A row missing a field a template names
        raises GraderError (a ValueError) naming the field."""
        if len(items) != len(outputs):
            raise ValueError(f"score_many: {len(items)} items but {len(outputs)} outputs")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise GraderError(f"row {i}: a grader's item is a mapping of fields, not {type(item).__name__}")
        if not items:
            return []
        samples = [make_sample(o if isinstance(o, str) else str(o)) for o in outputs]
        raws = [g.raw(items, samples) for g in self.graders]
        total = sum(self.weights)
        out = []
        for i in range(len(items)):
            by = {g.name: g.normalise(r[i]) for g, r in zip(self.graders, raws)}
            score = sum(w * s for w, s in zip(self.weights, by.values())) / total
            out.append({"score": score, "passed": all(g.passed(r[i]) for g, r in zip(self.graders, raws)),
                        "by_grader": by})
        return out


def load_graders(specs, base_dir=None, where: str = "rewards") -> Graders:
    """Check and build graders; model graders load their models here, once per path. base_dir:
    the folder relative paths (a run folder, a model folder, a python file) are resolved against."""
    items = check_specs(specs, where)
    errors: dict[str, int] = {}
    models = ModelCache(base_dir)
    graders = [_build(spec, at(where, specs, i), top_name(spec, i), errors, models, base_dir)
               for i, spec in enumerate(items)]
    return Graders(graders, [float(s.get("weight", 1)) for s in items], errors, models)
