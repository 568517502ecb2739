"""Experiment trackers a user already runs: TensorBoard, MLflow, Weights & Biases.

Each is a loop Callback (`train.report_to: [tensorboard, mlflow, wandb]`, any subset) and an
optional extra (`pip install tuneline[mlflow]`). They receive the same records as
metrics.jsonl: training records as train/<key>, evaluations as validation/<metric>, and at the
end the test metrics (test/<metric>, baseline/<metric>) with the run's files as artifacts.

- TensorBoard: event files in <run>/tensorboard (torch.utils.tensorboard).
- MLflow: params = the resolved recipe (flattened keys), metrics per step, artifacts = report,
  eval.json, diagnostics.json, recipe. Tracking URI: trackers.mlflow.tracking_uri, else
  $MLFLOW_TRACKING_URI, else a local file store ./mlruns.
- W&B: offline unless trackers.wandb.mode or $WANDB_MODE says online; files in <run>/wandb.

A tracker that fails to open stops the run before any training (a bad URI is a user error);
one that fails while logging is switched off with a warning: a tracking server's hiccup must
not cost hours of training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from ..errors import UserError
from .loop import Callback
from ..runs import RunDir

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
RUN_FILES = ("report.html", "eval.json", "diagnostics.json", "recipe.yaml", "run.json")


def check_available(recipe) -> None:
    """Before anything is trained: every tracker asked for must be installed."""
    for name in recipe.train.report_to:
        if importlib.util.find_spec(MODULES[name]) is None:
            raise UserError(f"train.report_to: {name} is not installed; pip install 'tuneline[{EXTRAS[name]}]' "
                            f"(or remove {name} from train.report_to)")


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def record_metrics(record: dict) -> tuple[dict[str, float], int]:
    """A metrics.jsonl record -> ({"train/loss": ...} or {"validation/accuracy": ...}, step)."""
    prefix = "train" if record.get("type") == "train" else record.get("split", "validation")
    skip = {"type", "split", "step"}
    values = {f"{prefix}/{k}": float(v) for k, v in record.items()
              if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return values, int(record["step"])


def test_metrics(result: dict) -> dict[str, float]:
    """eval.json -> test/<metric> and baseline/<metric> (numbers only)."""
    out = {}
    for side, prefix in (("tuned", "test"), ("baseline", "baseline")):
        for k, v in (result.get(side) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}/{k}"] = float(v)
    return out


class Tracker(Callback):
    """Opened at on_train_start (the step is known then, also on resume), closed by `tracking`."""

    name = "tracker"

    def __init__(self, recipe, run: RunDir, run_name: str):
        self.recipe, self.run, self.run_name = recipe, run, run_name
        self.opened, self.broken, self.step = False, False, 0

    # subclasses implement these three
    def _open(self, start_step: int, resumed: bool) -> dict: ...

    def _log(self, values: dict[str, float], step: int) -> None: ...

    def _close(self, status: str, result: dict | None) -> None: ...

    # -- callback hooks -----------------------------------------------------
    def on_train_start(self, trainer, state: dict) -> None:
        saved = self.run.read_manifest().get("trackers", {}).get(self.name)
        try:
            info = self._open(state["step"], resumed=saved is not None and state["step"] > 0)
        except UserError:
            raise
        except Exception as e:  # the library's own error, with our key in front
            raise UserError(f"trackers.{self.name}: cannot start {self.name}: {type(e).__name__}: {e}") from None
        self.opened = True
        self.step = state["step"]
        trackers = self.run.read_manifest().get("trackers", {})
        trackers[self.name] = info
        self.run.update_manifest(trackers=trackers)

    def on_log(self, trainer, record: dict) -> None:
        self._safe_log(*record_metrics(record))

    def on_evaluate(self, trainer, record: dict) -> None:
        self._safe_log(*record_metrics(record))

    def _safe_log(self, values: dict, step: int) -> None:
        if not self.opened or self.broken or not values:
            return
        self.step = max(self.step, step)
        try:
            self._log(values, step)
        except Exception as e:
            self.broken = True
            print(f"warning: {self.name} stopped logging ({type(e).__name__}: {e}); training goes on, "
                  f"metrics.jsonl has everything", file=sys.stderr, flush=True)

    def close(self, status: str) -> None:
        if not self.opened:
            return
        result = None
        eval_file = self.run.eval_file
        if status == "completed" and eval_file.exists():
            result = json.loads(eval_file.read_text())
            self._safe_log(test_metrics(result), self.step)
        try:
            self._close(status, result)
        except Exception as e:
            print(f"warning: {self.name} could not finish ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        self.opened = False

    def files(self) -> list[Path]:
        return [self.run.path / f for f in RUN_FILES if (self.run.path / f).exists()]


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def _open(self, start_step: int, resumed: bool) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.run.path / "tensorboard"
        # On resume, purge_step tells TensorBoard to drop what the killed run logged after the
        # checkpoint, as metrics.jsonl does.
        self.writer = SummaryWriter(str(folder), purge_step=start_step + 1 if resumed else None)
        if not resumed:
            from ..recipe import recipe_to_yaml

            self.writer.add_text("recipe", "```\n" + recipe_to_yaml(self.recipe) + "```", 0)
        return {"log_dir": "tensorboard"}

    def _log(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def _close(self, status, result):
        self.writer.add_text("status", status, self.step)
        self.writer.close()


class MlflowTracker(Tracker):
    name = "mlflow"

    def tracking_uri(self) -> str:
        uri = self.recipe.trackers.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = str(Path("mlruns").resolve())
        if "://" not in uri and not uri.startswith("file:"):
            uri = Path(uri).expanduser().resolve().as_uri()  # a folder: a local file store
        return uri

    def _open(self, start_step: int, resumed: bool) -> dict:
        uri = self.tracking_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode behind this switch; it needs no
            # database packages, which is why it is our default (mlflow-skinny is enough).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        saved = self.run.read_manifest().get("trackers", {}).get("mlflow")
        if resumed and saved and saved.get("tracking_uri") == uri:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = self.recipe.trackers.mlflow.experiment
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            tags = {"tuneline.run_dir": str(self.run.path.resolve()), "tuneline.task": self.recipe.task,
                    "tuneline.method": self.recipe.method, "tuneline.model": self.recipe.model}
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name, tags=tags).info.run_id
            self._log_params()
        return {"tracking_uri": uri, "run_id": self.run_id}

    def _log_params(self):
        from mlflow.entities import Param

        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in flatten(self.recipe.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _log(self, values, step):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _close(self, status, result):
        for f in self.files():
            self.client.log_artifact(self.run_id, str(f))
        mlflow_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=mlflow_status)


class WandbTracker(Tracker):
    name = "wandb"

    def _open(self, start_step: int, resumed: bool) -> dict:
        import wandb

        opts = self.recipe.trackers.wandb
        mode = opts.mode or os.environ.get("WANDB_MODE") or "offline"
        saved = self.run.read_manifest().get("trackers", {}).get("wandb")
        self.wb = wandb.init(
            project=opts.project, entity=opts.entity, name=self.run_name, mode=mode, dir=str(self.run.path),
            config=self.recipe.model_dump(mode="json"), save_code=False, reinit="create_new",
            id=saved["id"] if (resumed and saved) else None, resume="allow" if (resumed and saved) else None,
            # quiet, and no system-metrics sampling thread competing with training for the CPU
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        return {"id": self.wb.id, "mode": mode, "dir": "wandb"}

    def _log(self, values, step):
        self.wb.log(values, step=step)

    def _close(self, status, result):
        if result is not None:
            for k, v in test_metrics(result).items():
                self.wb.summary[k] = v
        self.wb.finish(exit_code=0 if status == "completed" else 1)


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


@contextlib.contextmanager
def tracking(recipe, run: RunDir):
    """The trackers of `train.report_to` as callbacks; closed with the run's outcome."""
    name = recipe.trackers.run_name or run.path.resolve().name
    trackers = [TRACKERS[n](recipe, run, name) for n in dict.fromkeys(recipe.train.report_to)]
    try:
        yield trackers
    except KeyboardInterrupt:
        for t in trackers:
            t.close("interrupted")
        raise
    except BaseException:
        for t in trackers:
            t.close("failed")
        raise
    for t in trackers:
        t.close("completed")
