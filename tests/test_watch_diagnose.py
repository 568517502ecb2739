"""The overfitting alarm: curves read like a practitioner would, on planted logs and a planted
overfit (tiny data with random labels, many epochs)."""

import json
import random

import tuneline
from tuneline.training.diagnose import diagnose
from tuneline.recipe import recipe_from_dict

from conftest import synthetic_rows, write_jsonl, write_recipe


def _recipe(**train):
    return recipe_from_dict({"task": "classify", "model": "x", "method": "lora", "data": {"train": "t.jsonl"},
                             "train": {"epochs": 10, **train}})


def _log(train_losses, val_losses, every=10, val_acc=None):
    out = [{"type": "train", "step": (i + 1) * 2, "epoch": (i + 1) * 2 / 20, "loss": v}
           for i, v in enumerate(train_losses)]
    for j, v in enumerate(val_losses):
        rec = {"type": "eval", "split": "validation", "step": (j + 1) * every, "epoch": (j + 1) * every / 20, "loss": v}
        if val_acc:
            rec["accuracy"] = val_acc[j]
        out.append(rec)
    return sorted(out, key=lambda r: r["step"])


def test_validation_rising_while_training_falls_is_overfitting():
    train = [1.0 * 0.9 ** i for i in range(50)]           # steps 2..100, keeps falling
    val = [0.9, 0.7, 0.6, 0.65, 0.75, 0.85, 0.95, 1.0, 1.1, 1.2]  # best at step 30
    findings = diagnose(_log(train, val), _recipe(), watch="loss", mode="min", best_step=30, train_rows=80)
    over = next(f for f in findings if f["check"] == "overfitting")
    assert over["severity"] == "warning" and over["step"] == 30
    assert "rose from 0.6 at step 30" in over["message"] and "to 1.2 at step 100" in over["message"]
    assert "best checkpoint (step 30" in over["message"]
    for tip in ("train.epochs: 2", "early_stopping", "train.dropout", "weight_decay", "lora.r: 4", "80 rows"):
        assert tip in over["advice"], tip
    best = next(f for f in findings if f["check"] == "best_model")
    assert best["step"] == 30 and "epoch 1.50" in best["message"]
    assert not any(f["check"] == "not_learning" for f in findings)


def test_task_metric_falling_counts_too():
    train = [1.0 * 0.9 ** i for i in range(50)]
    val = [0.9, 0.8, 0.75, 0.74, 0.74, 0.745, 0.745, 0.75, 0.75, 0.75]  # loss flat within noise
    acc = [0.6, 0.7, 0.8, 0.85, 0.8, 0.78, 0.76, 0.75, 0.74, 0.74]
    findings = diagnose(_log(train, val, val_acc=acc), _recipe(), watch="accuracy", mode="max", best_step=40)
    over = next(f for f in findings if f["check"] == "overfitting")
    assert over["step"] == 40 and "validation accuracy fell from 0.85 (step 40) to 0.74" in over["message"]


def test_healthy_run_has_no_alarm():
    train = [1.0 * 0.95 ** i for i in range(50)]
    val = [0.9, 0.8, 0.7, 0.65, 0.62, 0.6, 0.59, 0.585, 0.6, 0.59]  # small wiggle at the end
    findings = diagnose(_log(train, val), _recipe(), watch="loss", mode="min", best_step=80)
    assert [f["check"] for f in findings] == ["best_model"]


def test_flat_training_loss_is_not_learning():
    findings = diagnose(_log([1.1, 1.1, 1.09, 1.1, 1.1, 1.1], [1.1, 1.1]), _recipe(lr=1e-6),
                        watch="loss", mode="min")
    nl = next(f for f in findings if f["check"] == "not_learning")
    assert "barely moved" in nl["message"] and "train.lr (now 1e-06)" in nl["advice"]


def test_planted_overfit_is_reported_in_run_folder_and_output(tmp_path, tiny_bert, capsys):
    # 40 rows whose labels are coin flips: the model can only memorise them; validation gets worse
    def noisy(n, seed):
        rows, rng = synthetic_rows(n, seed), random.Random(seed)
        return [{**r, "label": rng.choice(["positive", "negative", "neutral"])} for r in rows]

    data = {name: write_jsonl(tmp_path / f"{name}.jsonl", noisy(n, s))
            for name, n, s in (("train", 40, 1), ("validation", 24, 2), ("test", 12, 3))}
    recipe = write_recipe(tmp_path / "overfit.yaml", task="classify", model=str(tiny_bert), method="full",
                          data={k: str(v) for k, v in data.items()},
                          train={"epochs": 15, "lr": 5e-3, "scheduler": "constant", "warmup_ratio": 0.0,
                                 "batch_size": 8, "max_length": 32, "log_every": 2, "seed": 7})
    result = tuneline.train(recipe, output=tmp_path / "run", force=True)
    out = capsys.readouterr().out
    findings = json.loads((result.path / "diagnostics.json").read_text())
    over = next(f for f in findings if f["check"] == "overfitting")
    assert set(over) == {"check", "severity", "message", "step", "advice"}
    assert over["severity"] == "warning" and "train.epochs" in over["advice"]
    manifest = json.loads((result.path / "run.json").read_text())
    assert manifest["status"] == "completed" and "overfitting" in manifest["diagnostics"]
    assert "Diagnostics:" in out and "what to change" in out
    # the same answer later, from the folder alone
    from typer.testing import CliRunner

    from tuneline.cli import app

    cli = CliRunner().invoke(app, ["diagnose", str(result.path), "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout) == findings


def test_a_small_rise_on_few_validation_rows_is_a_note_not_a_warning():
    # the demo's case: 0.2346 -> 0.2624 on 42 rows, the best checkpoint kept
    train = [1.0 * 0.9 ** i for i in range(50)]
    val = [0.9, 0.5, 0.3, 0.2346, 0.24, 0.25, 0.255, 0.26, 0.2624, 0.2624]
    few = diagnose(_log(train, val), _recipe(), watch="loss", mode="min", best_step=40, val_rows=42)
    over = next(f for f in few if f["check"] == "overfitting")
    assert over["severity"] == "info" and "On 42 validation rows a rise of 12 % is within noise" in over["message"]
    many = diagnose(_log(train, val), _recipe(), watch="loss", mode="min", best_step=40, val_rows=5000)
    assert next(f for f in many if f["check"] == "overfitting")["severity"] == "warning"


def test_a_tuned_model_worse_than_its_baseline_is_the_first_warning():
    from tuneline.tasks import get_task
    from tuneline.training.diagnose import _worse_than_baseline

    chat = get_task("generate")  # judged by chrF, higher is better
    worse = _worse_than_baseline({"tuned": {"chrf": 7.0}, "baseline": {"chrf": 22.9, "kind": "base_model"}}, chat)
    assert [f["severity"] for f in worse] == ["warning"]
    assert "worse than the baseline (base model) on chrf: chrf 7 vs 22.9" in worse[0]["message"]
    assert _worse_than_baseline({"tuned": {"chrf": 22.8}, "baseline": {"chrf": 22.9}}, chat) == []  # a tie
    assert _worse_than_baseline({"tuned": {"chrf": 30.0}, "baseline": {"chrf": 22.9}}, chat) == []
    assert _worse_than_baseline(None, chat) == []
    # several verdict metrics: a warning only when most of them are worse
    mixed = {"verdict_metrics": ["loss", "rougeL", "chrf_per_answer"],
             "tuned": {"loss": 2.42, "rougeL": 0.27, "chrf_per_answer": 28.4, "chrf": 19.2},
             "baseline": {"loss": 2.63, "rougeL": 0.20, "chrf_per_answer": 27.7, "chrf": 25.8}}
    assert _worse_than_baseline(mixed, chat) == []  # Dolly: better on loss and ROUGE-L, chrF per answer a tie
