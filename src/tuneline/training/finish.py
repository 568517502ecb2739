"""After the loop: restore the best weights, write the final model, evaluate, report, mark complete."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from .checkpoint import load_trainable_state
from .diagnose import diagnose_run, format_findings, write_diagnostics
from .guard import assert_finite
from .methods import PEFT_METHODS
from ..runs import RunDir, atomic_write_json, replace_dir


def save_final_model(model, tokenizer, recipe, run: RunDir) -> tuple[object, bool]:
    """Write adapter/ (PEFT methods) and model/ (plain Transformers). Returns (model to use, merged?)."""
    merged = True
    if recipe.method in PEFT_METHODS:
        tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=".adapter."))
        try:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            replace_dir(tmp, run.adapter_dir)
        except BaseException:  # a full disk must not leave a half-written temp folder behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if recipe.method == "prompt":
            # Virtual prompt tokens cannot be folded into the weights: the adapter is the model.
            return model, False
        model = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=".model."))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, run.model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model, merged


def run_info(recipe, source, labels, merged: bool, majority: int | None) -> dict:
    return {
        "format": 1,
        "task": recipe.task,
        "method": recipe.method,
        "labels": labels,
        "majority_label": labels[majority] if labels and majority is not None else None,
        "base_model": recipe.model,
        "base_model_path": source.path,
        "merged": merged,
        "model_dir": "model" if merged else None,
        "adapter_dir": "adapter" if recipe.method in PEFT_METHODS else None,
        "max_length": recipe.train.max_length,
        "trust_remote_code": recipe.trust_remote_code,
        "generate": recipe.generate.model_dump(mode="json"),
    }


def write_predictions(run: RunDir, predictions: list[dict], name: str = "predictions.jsonl") -> None:
    """Per-row test predictions: the evidence behind every number in eval.json."""
    import json

    from ..runs import atomic_write_text

    atomic_write_text(run.path / name, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))


def finish_run(recipe, task, source, tokenizer, prepared, run: RunDir, model, state: dict, started: float):
    from ..evaluate.suite import evaluate_model
    from ..reporting.model_card import write_model_card
    from .pipeline import RunResult
    from ..reporting.report import write_report

    best = run.best_ckpt / "trainable.safetensors"
    if best.exists():
        load_trainable_state(model, load_file(str(best)))
        print(f"Restored the best checkpoint (step {state['best_step']}, validation {state['metric']} "
              f"{state['best']:.4f}).", flush=True)
    model.eval()
    assert_finite(model)
    final, merged = save_final_model(model, tokenizer, recipe, run)
    info = run_info(recipe, source, prepared.labels, merged,
                    task.majority(prepared.train.labels) if prepared.labels else None)
    atomic_write_json(run.info_file, info)
    device = next(final.parameters()).device
    t0 = time.time()
    print(f"Evaluating on {len(prepared.test)} test rows ...", flush=True)
    result, predictions = evaluate_model(task, final, tokenizer, prepared.test, recipe, info, device)
    write_predictions(run, predictions)
    atomic_write_json(run.eval_file, result)
    eval_seconds = time.time() - t0
    run.update_manifest(
        status="completed", ended=time.time(), wall_seconds=round(time.time() - started, 2),
        steps=state["step"], best_step=state["best_step"], best_validation=state["best"],
        stopped_early=state["stopped_early"], trained_tokens=state["tokens"],
        computed_tokens=state.get("computed_tokens"),  # with padding: the share shows batching waste
        train_seconds=round(state["train_seconds"], 2),
        tokens_per_second=round(state["tokens"] / state["train_seconds"], 1) if state["train_seconds"] else None,
        test_eval_seconds=round(eval_seconds, 2),
    )
    shutil.rmtree(run.last_ckpt, ignore_errors=True)  # optimizer state is only needed to resume
    findings = diagnose_run(run, recipe, task, state)
    write_diagnostics(run, findings)  # before the report, which shows them
    write_report(run)
    write_model_card(run)
    print_summary(result, run)
    print("\n" + format_findings(findings), flush=True)
    return RunResult(run.path, result)


def print_summary(result: dict, run: RunDir) -> None:
    from ..reporting.tables import metrics_table

    print()
    print(metrics_table(result))
    print(f"\nRun folder: {run.path}")
    print(f"Report:     {run.report}")
