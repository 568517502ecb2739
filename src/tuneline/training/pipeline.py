"""One run from recipe to run folder: data -> model -> method -> loop -> final model -> eval -> report."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from . import distributed, faults, preflight
from .. import hardware
from ..data.io import Rows, file_sha256, read_rows, resolve_data_path, write_jsonl
from ..data import streaming
from ..data.replay import load_replay
from ..data.streaming import StreamedRows
from ..data.split import split_rows
from ..errors import RunStopped, UserError
from .methods import apply_method, count_parameters
from ..models import resolve_model, load_tokenizer
from ..recipe import Recipe, load_recipe, recipe_from_dict, recipe_to_yaml
from ..runs import RunDir, atomic_write_json, atomic_write_text, package_versions
from ..tasks import get_task
from .trackers import check_available as check_trackers, tracking


@dataclass
class Splits:
    train: Rows | StreamedRows  # StreamedRows: positions in the token cache (data larger than memory)
    validation: Rows
    test: Rows
    held_out: dict  # split name -> True when it was cut from train
    audit_train: Rows | None = None  # the training rows the audit reads when train is streamed (a sample)


def load_splits(recipe: Recipe, base_dir: Path | None, task, tokenizer=None) -> tuple[Splits, dict]:
    d = recipe.data
    paths = {"train": resolve_data_path(d.train, base_dir, "data.train")}
    for name in ("validation", "test"):
        value = getattr(d, name)
        if value:
            paths[name] = resolve_data_path(value, base_dir, f"data.{name}")
    sha = {}
    streamed = streaming.use_streaming(d, paths["train"])
    if streamed:
        if tokenizer is None:
            tokenizer = load_tokenizer(resolve_model(recipe.model, base_dir).path, recipe.trust_remote_code)
        sha["train"] = file_sha256(paths["train"])  # part of the token cache's key
        train = streaming.open_train(paths["train"], sha["train"], recipe, task, tokenizer)
    else:
        train = read_rows(paths["train"])
        if d.max_rows:
            train = train.subset(list(range(min(d.max_rows, len(train)))))
    held = {}
    parts = {}
    for name, size in (("test", d.test_size), ("validation", d.validation_size)):
        if name in paths:
            parts[name] = read_rows(paths[name])
        else:
            if streamed:
                strata = train.strata()
            else:
                strata = task.strata(train, recipe) if hasattr(task, "strata") else None
            train, parts[name] = split_rows(train, size, recipe.train.seed, strata, name)
            held[name] = True
    audit_train = None
    if streamed:  # held-out rows (and the audit's sample) read back from the file in one pass
        parts, audit_train = streaming.materialise(parts, train)
    hashes = {name: {"path": str(p), "sha256": sha.get(name) or file_sha256(p)} for name, p in paths.items()}
    return Splits(train, parts["validation"], parts["test"], held, audit_train), hashes


def _setup_threads(recipe: Recipe) -> None:
    n = recipe.train.num_threads
    if n is None and distributed.active():
        n = max(1, hardware.physical_cores() // distributed.world()[1])
    elif n is None and hardware.device_type() == "cpu":
        n, note = hardware.training_threads()
        if note:
            print(f"{note}: training on {n} thread{'s' if n > 1 else ''} (set train.num_threads to choose)", flush=True)
    torch.set_num_threads(n or hardware.physical_cores())


def _accelerator(precision: str):
    from accelerate import Accelerator

    if precision == "fp16" and hardware.device_type() == "cpu":
        raise UserError("train.precision: fp16 needs a GPU; use auto, fp32 or bf16 on a CPU")
    return Accelerator(mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision])


def train(recipe: Recipe | str | Path, **kwargs) -> "RunResult | dict | None":
    """Run a recipe end to end; returns the run's results (None on non-zero ranks of a
    multi-process run). Raises UserError for bad input."""
    if not distributed.active():
        return _train(recipe, **kwargs)
    import contextlib
    import os

    distributed.init()
    if distributed.is_main():
        return _train(recipe, **kwargs)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        return _train(recipe, **kwargs)


def _train(recipe: Recipe | str | Path, *, overrides: list[str] | None = None, output: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, base_dir: Path | None = None,
          force: bool = False, callbacks: list | None = None, dry_run: bool = False) -> "RunResult | dict":
    name = "run"
    recipe_arg = recipe if isinstance(recipe, (str, Path)) else None
    if isinstance(recipe, (str, Path)):
        name = Path(recipe).stem if Path(recipe).stem != "recipe" else Path(recipe).resolve().parent.name
        recipe, base_dir = load_recipe(recipe, overrides)
    elif overrides:
        from ..recipe import apply_overrides

        recipe = recipe_from_dict(apply_overrides(recipe.model_dump(mode="json"), overrides))
    out = Path(output or recipe.output or Path("runs") / name)
    run = RunDir(out)
    if not dry_run:
        preflight.check_output_path(out)
    if run.path.exists() and any(run.path.iterdir()) and not dry_run:
        if resume:
            if not run.exists():
                raise UserError(f"{out}: not a run folder (run.json missing); nothing to resume")
            saved = recipe_from_dict(yaml.safe_load(run.recipe.read_text()), str(run.recipe))
            diff = _recipe_diff(saved, recipe)
            if diff:
                raise UserError(f"--resume: the recipe differs from the run's ({', '.join(diff)}); "
                                f"resume with the same recipe, or start a new run")
            if run.read_manifest().get("status") == "completed":
                print(f"{out} is already complete; nothing to resume.")
                return RunResult.load(out)
        elif not overwrite:
            raise UserError(f"{out}: run folder already exists; use --resume to continue it, --overwrite to "
                            f"replace it, or set output to a new folder")
    elif resume:
        resume = False  # nothing to resume: a fresh run

    _resolve_eval_files(recipe, base_dir)
    task = get_task(recipe.task)
    if recipe.train.early_stopping and recipe.train.early_stopping.metric not in task.metric_names:
        raise UserError(f"train.early_stopping.metric: {recipe.train.early_stopping.metric!r} is not a "
                        f"{recipe.task} metric; allowed: {', '.join(task.metric_names)}")
    check_trackers(recipe)
    _setup_threads(recipe)
    precision = hardware.resolve_precision(recipe.train.precision)
    source = resolve_model(recipe.model, base_dir)
    tokenizer = load_tokenizer(source.path, recipe.trust_remote_code)
    splits, hashes = load_splits(recipe, base_dir, task, tokenizer)
    replay = load_replay(recipe, tokenizer, base_dir, len(splits.train)) if recipe.train.replay else None
    if replay:
        hashes["replay"] = replay.source  # in run.json, and checked on resume like the data files
    if resume:
        old = run.read_manifest().get("data", {})
        changed = [k for k, v in hashes.items() if old.get(k, {}).get("sha256") != v["sha256"]]
        if changed:
            raise UserError(f"--resume: data changed since the run started ({', '.join(changed)}); start a new run")

    audit_result = run_audit(recipe, splits, tokenizer, force or dry_run)
    prepared = task.prepare(splits, recipe, tokenizer)
    preflight.check(recipe, task, source, prepared, out, writes=not dry_run)
    if dry_run:
        from .estimate import dry_run as estimate, format_plan

        plan = estimate(recipe, task, source, tokenizer, prepared)
        where = (f"{torch.get_num_threads()} CPU threads" if hardware.device_type() == "cpu"
                 else hardware.describe()["cuda_device"])
        print(format_plan(plan, recipe, precision, where), flush=True)
        return plan
    if replay:
        prepared.train = replay.mix_into(prepared.train)
    distributed.barrier()  # every rank has checked the folder before rank 0 changes it
    main = distributed.is_main()
    if overwrite and not resume and run.path.exists() and main:
        # only now, with recipe, model and data checked: a bad input never costs the old run
        shutil.rmtree(run.path)
    started = time.time()
    if resume:
        started = run.read_manifest().get("started", started)
    if not main:
        return _train_and_finish(recipe, task, source, tokenizer, prepared, run, precision, resume, started, callbacks)
    existed = run.path.exists()
    fresh = not resume and not (existed and any(run.path.iterdir()))  # nothing of value in it yet
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.path / "audit.json", audit_result.as_dict())
    if not resume:
        atomic_write_text(run.recipe, recipe_to_yaml(recipe))
        for split_name in splits.held_out:
            write_jsonl(run.splits / f"{split_name}.jsonl", getattr(splits, split_name).records)
    run.update_manifest(nproc=distributed.world()[1],
        status="running", task=recipe.task, method=recipe.method, model=recipe.model,
        model_path=source.path, precision=precision, started=started, data=hashes,
        held_out={k: f"data/{k}.jsonl" for k in splits.held_out},  # relative to the run folder
        rows={"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        versions=package_versions(), hardware=hardware.describe(), error=None,
    )
    try:
        with tracking(recipe, run) as trackers:
            result = _train_and_finish(recipe, task, source, tokenizer, prepared, run, precision, resume, started,
                                       [*(callbacks or []), *trackers])
    except RunStopped as e:  # stopped on purpose by a callback (e.g. a pruned search trial)
        run.update_manifest(status=e.status, ended=time.time(), error=None, stopped=str(e))
        raise
    except BaseException as e:
        err = faults.on_failure(run, e, recipe, fresh=fresh, existed=existed,
                                resume_cmd=faults.resume_command(recipe_arg, out, overrides, force))
        if err is e:
            raise
        raise err from e
    return result


def _resolve_eval_files(recipe: Recipe, base_dir: Path | None) -> None:
    """Files the evaluation reads, checked before training and stored as absolute paths in the
    run's recipe, so `tuneline evaluate` / `report` later find them from any folder."""
    e = recipe.eval
    if e.forgetting.reference:
        e.forgetting.reference = str(resolve_data_path(e.forgetting.reference, base_dir, "eval.forgetting.reference"))
    if isinstance(e.counterfactuals, str):
        e.counterfactuals = str(resolve_data_path(e.counterfactuals, base_dir, "eval.counterfactuals"))
        from ..evaluate.counterfactual import load_pairs

        load_pairs(e.counterfactuals)  # a malformed pairs file fails now, not after training


def run_audit(recipe: Recipe, splits: Splits, tokenizer, force: bool):
    """The same audit as `tuneline data check`, before any training time is spent."""
    from ..data.audit import audit, format_table

    t0 = time.time()
    d = recipe.data
    train = splits.train
    if splits.audit_train is not None:  # streamed: a full in-memory audit would defeat streaming
        train = splits.audit_train
    if len(train) < len(splits.train):
        print(f"Data audit on the first {len(train):,} of {len(splits.train):,} training rows (the file is "
              f"streamed; `tuneline data check {splits.train.source}` audits every row)", flush=True)
    result = audit({"train": train, "validation": splits.validation, "test": splits.test}, recipe.task,
                   text_column=d.text_column, label_column=d.label_column, fmt=d.format, tokenizer=tokenizer,
                   max_length=recipe.train.max_length,
                   system_prompt=recipe.generate.system_prompt if recipe.task == "generate" else None)
    print(format_table(result) + f"\n  ({time.time() - t0:.1f} s; details in the run's audit.json)", flush=True)
    if result.errors and not force:
        from ..data.audit import error_summary

        raise UserError(f"the data audit found errors: {error_summary(result)}. Fix the data (`tuneline data check FILE --fix DIR` "
                        "writes cleaned copies) or train anyway with --force")
    return result


def _recipe_diff(a: Recipe, b: Recipe) -> list[str]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    out = []

    def walk(x, y, prefix):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            out.append(prefix.rstrip("."))

    walk(da, db, "")
    return [k for k in out if k != "output"]


def _train_and_finish(recipe, task, source, tokenizer, prepared, run: RunDir, precision, resume, started,
                      callbacks=None):
    from transformers import set_seed

    from .finish import finish_run

    # Seed before the model is built: the new head's initial weights depend on it.
    set_seed(recipe.train.seed)
    model = task.load_model(source.path, recipe, tokenizer, prepared.labels)
    model = apply_method(model, recipe)
    trainable, total = count_parameters(model)
    print(f"Model {recipe.model} ({source.kind}), method {recipe.method}: trainable parameters "
          f"{trainable:,} of {total:,} ({100 * trainable / total:.2f} %)", flush=True)
    where = (f"{torch.get_num_threads()} CPU threads" if hardware.device_type() == "cpu"
             else hardware.describe()["cuda_device"])
    print(f"Data: {len(prepared.train)} train, {len(prepared.validation)} validation, {len(prepared.test)} test rows; "
          f"precision {precision} on {where}", flush=True)
    if distributed.is_main():
        run.update_manifest(parameters={"trainable": trainable, "total": total})

    from .loop import Trainer

    accelerator = _accelerator(precision)
    trainer = Trainer(model=model, task=task, train_data=prepared.train, val_data=prepared.validation,
                      labels=prepared.labels, recipe=recipe, run=run, pad_id=tokenizer.pad_token_id,
                      accelerator=accelerator, callbacks=callbacks)
    print(f"Training {trainer.plan.total_steps} steps ({trainer.plan.steps_per_epoch} per epoch) -> {run.path}",
          flush=True)
    with faults.graceful_interrupt(enabled=not distributed.active()):
        state = trainer.run_loop(resume=resume)
    if trainer.sharded:
        model = _unsharded_model(trainer, task, source, recipe, tokenizer, prepared.labels, state)
    else:
        model = accelerator.unwrap_model(trainer.model)
    del trainer
    if not distributed.is_main():
        return None  # rank 0 writes the model, evaluates and reports
    return finish_run(recipe, task, source, tokenizer, prepared, run, model, state, started)


def _unsharded_model(trainer, task, source, recipe, tokenizer, labels, state):
    """The trained model as a plain one on rank 0 (None elsewhere), for finish_run: rebuilt from the
    source like at the start, then given the trained weights. finish_run restores the best
    checkpoint's weights anyway; the final ones are gathered only when there is none."""
    from .checkpoint import load_trainable_state, trainable_state

    main = distributed.is_main()
    final = trainable_state(trainer.model, keep=main) if state["best_step"] is None else {}
    if not main:
        return None
    trainer.root = trainer.model = trainer.optimizer = None  # drop the shards before the full copy is built
    model = apply_method(task.load_model(source.path, recipe, tokenizer, labels), recipe)
    load_trainable_state(model, final)
    device = trainer.acc.device
    if device.type != "cpu":
        # the test evaluation runs on rank 0 alone: on its device if the whole model fits there
        try:
            model.to(device)
        except torch.OutOfMemoryError:
            model.to("cpu")
            torch.cuda.empty_cache()
            print("The trained model does not fit one device: the test evaluation runs on the CPU.", flush=True)
    return model


@dataclass
class RunResult:
    path: Path
    eval: dict

    @classmethod
    def load(cls, path) -> "RunResult":
        import json

        run = RunDir(path)
        data = json.loads(run.eval_file.read_text()) if run.eval_file.exists() else {}
        return cls(Path(path), data)
