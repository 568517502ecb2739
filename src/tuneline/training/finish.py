"""After the loop: restore the best weights, write the final model, evaluate, report, mark complete."""

from __future__ import annotations

import json
import shutil
import time

from safetensors.torch import load_file

from .checkpoint import load_trainable_state
from .diagnose import diagnose_run, format_findings, write_diagnostics
from .frozen_precision import restore_full_precision
from .guard import assert_finite
from .quantized_base import dequantize_base
from .methods import get_method
from ..runs import RunDir, RunResult, atomic_write_json, atomic_write_text, staged_dir
from .context import RunContext


def save_final_model(model, tokenizer, recipe, run: RunDir, load_base=None) -> tuple[object, bool]:
    """Write adapter/ (adapter methods) and model/ (plain Transformers). Returns (model to use, merged?).
    load_base: a callable returning the base model as loaded (frozen weights kept in bf16 get their
    loaded values back from it before the merge)."""
    method = get_method(recipe.method)
    if method.adapter:
        with staged_dir(run.adapter_dir) as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        if not method.mergeable:
            return model, False  # the adapter is the model (prompt tuning's virtual tokens)
        restore_full_precision(model, load_base)  # the deltas added in fp32 to the loaded weights
        dequantize_base(model)  # a 4-bit base as the fp32 values it trained with (qlora)
        model = model.merge_and_unload()
    with staged_dir(run.model_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return model, True


def run_info(recipe, task, source, prepared, merged: bool) -> dict:
    """The run's tuneline.json, which load_run reads: the keys every run has, then the task's."""
    return {
        "format": 1,
        "task": recipe.task,
        "objective": recipe.objective,
        "method": recipe.method,
        "labels": None,  # a task with labels fills these two (task.run_info)
        "majority_label": None,
        "base_model": recipe.model,
        "base_model_path": source.path,
        "merged": merged,
        "model_dir": "model" if merged else None,
        "adapter_dir": "adapter" if get_method(recipe.method).adapter else None,
        "max_length": recipe.train.max_length,
        "trust_remote_code": recipe.trust_remote_code,
        **task.run_info(recipe, prepared),
    }


def write_predictions(run: RunDir, predictions: list[dict], name: str = "predictions.jsonl") -> None:
    """Per-row test predictions: the evidence behind every number in eval.json."""
    atomic_write_text(run.path / name, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))


def finish_run(ctx: RunContext, model, state: dict) -> RunResult:
    """After the loop, on rank 0: the best weights restored, the final model written with its
    tuneline.json, the test evaluation, run.json completed, diagnostics, report and model card."""
    from ..reporting.model_card import write_model_card
    from ..reporting.report import write_report

    run = ctx.run
    _restore_best(model, run, state)
    load_base = lambda: ctx.task.load_model(ctx.source.path, ctx.recipe, ctx.tokenizer, ctx.prepared.labels)  # noqa: E731
    final, merged = save_final_model(model, ctx.tokenizer, ctx.recipe, run, load_base)
    info = run_info(ctx.recipe, ctx.task, ctx.source, ctx.prepared, merged)
    atomic_write_json(run.info_file, info)
    result, eval_seconds = _evaluate_test(ctx, final, info)
    _complete_manifest(ctx, state, eval_seconds)
    shutil.rmtree(run.last_ckpt, ignore_errors=True)  # optimizer state is only needed to resume
    findings = diagnose_run(run, ctx.recipe, ctx.task, state)
    write_diagnostics(run, findings)  # before the report, which shows them
    write_report(run)
    write_model_card(run)
    print_summary(result, run)
    print("\n" + format_findings(findings), flush=True)
    return RunResult(run.path, result)


def _restore_best(model, run: RunDir, state: dict) -> None:
    """The best checkpoint's weights into the model (if one was kept), checked to be numbers."""
    best = run.best_ckpt / "trainable.safetensors"
    if best.exists():
        load_trainable_state(model, load_file(str(best)))
        print(f"Restored the best checkpoint (step {state['best_step']}, validation {state['metric']} "
              f"{state['best']:.4f}).", flush=True)
    model.eval()
    assert_finite(model)


def _evaluate_test(ctx: RunContext, model, info: dict) -> tuple[dict, float]:
    """eval.json and predictions.jsonl written; returns the eval.json object and the seconds it took."""
    from ..evaluation.suite import evaluate_model

    device = next(model.parameters()).device
    t0 = time.time()
    n, cap = len(ctx.prepared.test), ctx.task.max_eval_rows(ctx.recipe)
    scored = f"the first {cap} of {n} test rows (eval.max_samples)" if cap and cap < n else f"{n} test rows"
    print(f"Evaluating on {scored} against the baseline ...", flush=True)
    result, predictions = evaluate_model(ctx.task, model, ctx.tokenizer, ctx.prepared.test, ctx.recipe, info, device)
    write_predictions(ctx.run, predictions)
    atomic_write_json(ctx.run.eval_file, result)
    return result, time.time() - t0


def _complete_manifest(ctx: RunContext, state: dict, eval_seconds: float) -> None:
    seconds = state["train_seconds"]
    ctx.run.update_manifest(
        status="completed", ended=time.time(), wall_seconds=round(time.time() - ctx.started, 2),
        steps=state["step"], best_step=state["best_step"], best_validation=state["best"],
        stopped_early=state["stopped_early"], trained_tokens=state["tokens"],
        computed_tokens=state.get("computed_tokens"),  # with padding: the share shows batching waste
        train_seconds=round(seconds, 2),
        tokens_per_second=round(state["tokens"] / seconds, 1) if seconds else None,
        test_eval_seconds=round(eval_seconds, 2),
    )


def print_summary(result: dict, run: RunDir) -> None:
    from ..reporting.tables import metrics_table

    print()
    print(metrics_table(result))
    print(f"\nRun folder: {run.path}")
    print(f"Report:     {run.report}")
