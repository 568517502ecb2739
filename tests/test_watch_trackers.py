"""Trackers against the real libraries and local stores: TensorBoard event files, an MLflow file
store and a W&B offline run are read back and compared with metrics.jsonl and eval.json."""

import glob
import json
import struct

import pytest

import tuneline
from tuneline.errors import RunFailed, UserError
from tuneline.runs import RunDir
from tuneline.training.trackers import MlflowTracker


def _recipe(tiny_recipe, tmp_path, report_to, **train):
    import yaml

    path = tiny_recipe("full", **{"max_steps": 12, "log_every": 2, "eval_every": 4, "report_to": report_to, **train})
    data = yaml.safe_load(path.read_text())
    data["trackers"] = {"mlflow": {"tracking_uri": str(tmp_path / "mlruns"), "experiment": "watch-test"},
                        "run_name": "tiny"}
    path.write_text(yaml.safe_dump(data))
    return path


def _wandb_records(path):
    """The records of an offline W&B run file: a 7-byte header, then LevelDB-log chunks of protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # W&B stores "train/loss" as the path [train, loss]


def test_all_three_trackers_read_back(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, tmp_path, ["tensorboard", "mlflow", "wandb"])
    result = tuneline.train(recipe, output=tmp_path / "run")
    logged = RunDir(result.path).read_metrics()
    train = {r["step"]: r["loss"] for r in logged if r["type"] == "train"}
    val = {r["step"]: r["accuracy"] for r in logged if r["type"] == "eval"}
    test_acc = result.eval["tuned"]["accuracy"]
    assert len(train) == 6 and len(val) == 3

    # TensorBoard: event files in the run folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(result.path / "tensorboard"))
    ea.Reload()
    assert {e.step: e.value for e in ea.Scalars("train/loss")} == pytest.approx(train)
    assert {e.step: e.value for e in ea.Scalars("validation/accuracy")} == pytest.approx(val)
    assert ea.Scalars("test/accuracy")[-1].value == pytest.approx(test_acc)
    assert "train/grad_norm" in ea.Tags()["scalars"] and "recipe/text_summary" in ea.Tags()["tensors"]

    # MLflow: a local file store
    from mlflow.tracking import MlflowClient

    manifest = json.loads((result.path / "run.json").read_text())
    info = manifest["trackers"]["mlflow"]
    client = MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["train.lr"] == "0.002" and run.data.params["method"] == "full"
    assert run.data.params["train.report_to"] == '["tensorboard", "mlflow", "wandb"]'
    history = {m.step: m.value for m in client.get_metric_history(info["run_id"], "train/loss")}
    assert history == pytest.approx(train)
    assert run.data.metrics["test/accuracy"] == pytest.approx(test_acc)
    assert "baseline/accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"report.html", "eval.json", "diagnostics.json", "recipe.yaml"} <= artifacts
    local = client.download_artifacts(info["run_id"], "eval.json", str(tmp_path))
    assert json.loads(open(local).read()) == result.eval

    # W&B: offline unless configured
    assert manifest["trackers"]["wandb"]["mode"] == "offline"
    files = glob.glob(str(result.path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    history, summary, config = {}, {}, {}
    for rec in _wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {_key(i): json.loads(i.value_json) for i in rec.history.item}
            if "train/loss" in items:
                history[items["_step"]] = items["train/loss"]
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "run":
            config = {_key(i): json.loads(i.value_json) for i in rec.run.config.update}
    assert history == pytest.approx(train)
    assert summary["test/accuracy"] == pytest.approx(test_acc)
    assert config["train"]["lr"] == 0.002


def test_missing_tracker_is_a_user_error_before_anything_runs(tiny_recipe, tmp_path, monkeypatch):
    import tuneline.training.trackers as trackers

    monkeypatch.setitem(trackers.MODULES, "mlflow", "no_such_module_for_tuneline_tests")
    recipe = _recipe(tiny_recipe, tmp_path, ["mlflow"])
    with pytest.raises(UserError, match=r"pip install 'tuneline\[mlflow\]'"):
        tuneline.train(recipe, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_report_to_takes_one_name(tiny_recipe, tmp_path):
    from tuneline.recipe import load_recipe

    recipe, _ = load_recipe(tiny_recipe("full"), ["train.report_to=mlflow"])
    assert recipe.train.report_to == ["mlflow"]
    with pytest.raises(UserError, match="report_to"):
        load_recipe(tiny_recipe("full"), ["train.report_to=[neptune]"])


def test_a_failed_run_is_failed_in_mlflow_and_a_logging_error_does_not_stop_training(tiny_recipe, tmp_path,
                                                                                     monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from tuneline.tasks.classify import ClassifyTask

    # 1) a tracker that breaks while logging: warned, switched off, the run completes
    def broken(self, values, step):
        raise ConnectionError("tracking server went away")

    with monkeypatch.context() as m:
        m.setattr(MlflowTracker, "_log", broken)
        recipe = _recipe(tiny_recipe, tmp_path, ["mlflow"], max_steps=4)
        result = tuneline.train(recipe, output=tmp_path / "ok")
    assert "mlflow stopped logging (ConnectionError" in capsys.readouterr().err
    assert json.loads((result.path / "run.json").read_text())["status"] == "completed"

    # 2) a diverged run: FAILED in MLflow, with its diagnostics as an artifact
    original = ClassifyTask.loss
    monkeypatch.setattr(ClassifyTask, "loss", lambda self, model, batch: original(self, model, batch) * float("nan"))
    with pytest.raises(RunFailed):
        tuneline.train(recipe, output=tmp_path / "nan")
    info = json.loads((tmp_path / "nan" / "run.json").read_text())["trackers"]["mlflow"]
    client = MlflowClient(info["tracking_uri"])
    assert client.get_run(info["run_id"]).info.status == "FAILED"
    assert "diagnostics.json" in {a.path for a in client.list_artifacts(info["run_id"])}
