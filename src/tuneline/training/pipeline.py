"""One run from recipe to run folder: data -> model -> method -> loop -> final model -> eval -> report."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

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
from ..recipe import Recipe, apply_overrides, load_recipe, recipe_diff, recipe_from_dict, recipe_to_yaml
from ..runs import RunDir, RunResult, atomic_write_json, atomic_write_text, package_versions
from ..tasks import task_of
from .context import RunContext
from .finish import finish_run
from .loop import Trainer
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
                strata = task.strata(train, recipe)
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
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        # Accelerate keeps one precision per process and refuses another: a second run in the same
        # process (a notebook, tests) with another precision would fail. The process group (PartialState)
        # stays; only the precision state is dropped. Accelerate has no public call for this.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed)


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
    recipe_arg = recipe if isinstance(recipe, (str, Path)) else None
    recipe, base_dir, name = _read_recipe(recipe, overrides, base_dir)
    run = RunDir(output or recipe.output or Path("runs") / name)
    resume = _check_output(run, recipe, resume, overwrite, dry_run)
    if resume and not dry_run and run.read_manifest().get("status") == "completed":
        print(f"{run.path} is already complete; nothing to resume.")
        return RunResult.load(run.path)
    task, source, tokenizer, precision = _set_up(recipe, base_dir)
    splits, hashes, replay = _load_data(recipe, task, tokenizer, base_dir, run if resume else None)
    audit_result = run_audit(recipe, task, splits, tokenizer, force, dry_run)
    prepared = task.prepare(splits, recipe, tokenizer)
    preflight.check(recipe, task, source, prepared, run.path, writes=not dry_run)
    if dry_run:
        return _dry_run(recipe, task, source, tokenizer, prepared, precision)
    if replay:
        prepared.train = replay.mix_into(prepared.train)
    started = run.read_manifest().get("started", time.time()) if resume else time.time()
    ctx = RunContext(recipe, task, source, tokenizer, prepared, run, precision, resume, started, list(callbacks or []))
    distributed.barrier()  # every rank has checked the folder before rank 0 changes it
    if not distributed.is_main():
        return _train_and_finish(ctx)  # rank 0 alone writes the run folder
    fresh, existed = _open_run_folder(ctx, overwrite, splits, hashes, audit_result)
    return _train_recorded(ctx, fresh, existed, faults.resume_command(recipe_arg, run.path, overrides, force))


def _read_recipe(recipe: Recipe | str | Path, overrides: list[str] | None,
                 base_dir: Path | None) -> tuple[Recipe, Path | None, str]:
    """The recipe with its --set overrides, the folder its relative paths start from, and the
    run's default name (the recipe file's, or its folder's for a file called recipe.yaml)."""
    if isinstance(recipe, (str, Path)):
        path = Path(recipe)
        name = path.stem if path.stem != "recipe" else path.resolve().parent.name
        recipe, base_dir = load_recipe(recipe, overrides)
        return recipe, base_dir, name
    if overrides:
        recipe = recipe_from_dict(apply_overrides(recipe.model_dump(mode="json"), overrides))
    return recipe, base_dir, "run"


def _check_output(run: RunDir, recipe: Recipe, resume: bool, overwrite: bool, dry_run: bool) -> bool:
    """Checks the output folder against --resume / --overwrite; returns whether the run resumes
    (an empty or missing folder has nothing to resume: a fresh run). A dry run writes nothing."""
    if not dry_run:
        preflight.check_output_path(run.path)
    if not (run.path.exists() and any(run.path.iterdir())):
        return False
    if dry_run:
        return resume
    if resume:
        if not run.exists():
            raise UserError(f"{run.path}: not a run folder (run.json missing); nothing to resume")
        diff = [k for k in recipe_diff(run.load_recipe(), recipe) if k != "output"]
        if diff:
            raise UserError(f"--resume: the recipe differs from the run's ({', '.join(diff)}); "
                            f"resume with the same recipe, or start a new run")
    elif not overwrite:
        raise UserError(f"{run.path}: run folder already exists; use --resume to continue it, --overwrite to "
                        f"replace it, or set output to a new folder")
    return resume


def _set_up(recipe: Recipe, base_dir: Path | None) -> tuple:
    """Checks what the recipe names before any data is read; returns (task, model source,
    tokenizer, precision)."""
    _resolve_eval_files(recipe, base_dir)
    task = task_of(recipe)
    if recipe.train.early_stopping and recipe.train.early_stopping.metric not in task.metric_names:
        raise UserError(f"train.early_stopping.metric: {recipe.train.early_stopping.metric!r} is not a "
                        f"{recipe.task} metric; allowed: {', '.join(task.metric_names)}")
    bad = [m for m in recipe.eval.headline or [] if m not in task.headline_metrics]
    if bad:
        raise UserError(f"eval.headline: {bad[0]!r} is not a {recipe.task} test metric; allowed: "
                        f"{', '.join(task.headline_metrics)}")
    check_trackers(recipe)
    _setup_threads(recipe)
    precision = hardware.resolve_precision(recipe.train.precision)
    source = resolve_model(recipe.model, base_dir)
    preflight.check_model(recipe, task, source)
    return task, source, load_tokenizer(source.path, recipe.trust_remote_code), precision


def _load_data(recipe: Recipe, task, tokenizer, base_dir: Path | None, resumed: RunDir | None):
    """The splits, their files' hashes (run.json's `data`) and the replay rows (or None); for a
    resumed run, the files are checked against the hashes it started with."""
    splits, hashes = load_splits(recipe, base_dir, task, tokenizer)
    replay = load_replay(recipe, task, tokenizer, base_dir, len(splits.train)) if recipe.train.replay else None
    if replay:
        hashes["replay"] = replay.source  # in run.json, and checked on resume like the data files
    if resumed is not None:
        old = resumed.read_manifest().get("data", {})
        changed = [k for k, v in hashes.items() if old.get(k, {}).get("sha256") != v["sha256"]]
        if changed:
            raise UserError(f"--resume: data changed since the run started ({', '.join(changed)}); start a new run")
    return splits, hashes, replay


def _dry_run(recipe: Recipe, task, source, tokenizer, prepared, precision: str) -> dict:
    from .estimate import dry_run as estimate, format_plan

    plan = estimate(recipe, task, source, tokenizer, prepared)
    print(format_plan(plan, recipe, precision, _where()), flush=True)
    return plan


def _where() -> str:
    """Where training runs, for the terminal."""
    if hardware.device_type() == "cpu":
        return f"{torch.get_num_threads()} CPU threads"
    return hardware.describe()["cuda_device"]


def _open_run_folder(ctx: RunContext, overwrite: bool, splits: Splits, hashes: dict, audit_result) -> tuple[bool, bool]:
    """Rank 0 writes the run's audit, recipe, held-out splits and run.json. Returns (fresh,
    existed): the folder held nothing of value yet / was there before this run."""
    run, recipe = ctx.run, ctx.recipe
    if overwrite and not ctx.resume and run.path.exists():
        # only now, with recipe, model and data checked: a bad input never costs the old run
        shutil.rmtree(run.path)
    existed = run.path.exists()
    fresh = not ctx.resume and not (existed and any(run.path.iterdir()))
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.path / "audit.json", audit_result.as_dict())
    if not ctx.resume:
        # the folder it was written to (-o, or the default), so the saved recipe says where its run is
        atomic_write_text(run.recipe, recipe_to_yaml(recipe.model_copy(update={"output": str(run.path)})))
        for split_name in splits.held_out:
            write_jsonl(run.splits / f"{split_name}.jsonl", getattr(splits, split_name).records)
    run.update_manifest(nproc=distributed.world()[1],
        status="running", task=recipe.task, objective=recipe.objective, method=recipe.method, model=recipe.model,
        model_path=ctx.source.path, precision=ctx.precision, started=ctx.started, data=hashes,
        held_out={k: f"data/{k}.jsonl" for k in splits.held_out},  # relative to the run folder
        rows={"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        versions=package_versions(), hardware=hardware.describe(), error=None,
    )
    return fresh, existed


def _train_recorded(ctx: RunContext, fresh: bool, existed: bool, resume_cmd: str) -> RunResult:
    """Trains and finishes with the trackers open; a stop or failure is recorded in run.json."""
    try:
        with tracking(ctx.recipe, ctx.run) as trackers:
            ctx.callbacks = [*ctx.callbacks, *trackers]
            return _train_and_finish(ctx)
    except RunStopped as e:  # stopped on purpose by a callback (e.g. a pruned search trial)
        ctx.run.update_manifest(status=e.status, ended=time.time(), error=None, stopped=str(e))
        raise
    except BaseException as e:
        err = faults.on_failure(ctx.run, e, ctx.recipe, fresh=fresh, existed=existed, resume_cmd=resume_cmd)
        if err is e:
            raise
        raise err from e


def _resolve_eval_files(recipe: Recipe, base_dir: Path | None) -> None:
    """Files the evaluation reads, checked before training and stored as absolute paths in the
    run's recipe, so `tuneline evaluate` / `report` later find them from any folder."""
    e = recipe.eval
    if recipe.rewards:
        from ..rewards import resolve_paths

        recipe.rewards = resolve_paths(recipe.rewards, base_dir)
    if e.forgetting.reference:
        e.forgetting.reference = str(resolve_data_path(e.forgetting.reference, base_dir, "eval.forgetting.reference"))
    if isinstance(e.counterfactuals, str):
        e.counterfactuals = str(resolve_data_path(e.counterfactuals, base_dir, "eval.counterfactuals"))
        from ..evaluation.counterfactual import load_pairs

        load_pairs(e.counterfactuals)  # a malformed pairs file fails now, not after training


def run_audit(recipe: Recipe, task, splits: Splits, tokenizer, force: bool, dry_run: bool = False):
    """The same audit as `tuneline data check`, before any training time is spent. Errors stop the
    run unless --force; a dry run only shows them (it writes nothing, audit.json included)."""
    from ..data.audit import audit, format_table

    t0 = time.time()
    d = recipe.data
    train = splits.train
    if splits.audit_train is not None:  # streamed: a full in-memory audit would defeat streaming
        train = splits.audit_train
    if len(train) < len(splits.train):
        print(f"Data audit on the first {len(train):,} of {len(splits.train):,} training rows (the file is "
              f"streamed; `tuneline data check {splits.train.source}` audits every row)", flush=True)
    result = audit({"train": train, "validation": splits.validation, "test": splits.test}, task.data_shape,
                   text_column=d.text_column, label_column=d.label_column, fmt=d.format, tokenizer=tokenizer,
                   max_length=recipe.train.max_length, **task.audit_options(recipe))
    where = ("a dry run writes no audit.json; `tuneline data check FILE --json` prints the details" if dry_run
             else "details in the run's audit.json")
    print(format_table(result) + f"\n  ({time.time() - t0:.1f} s; {where})", flush=True)
    if result.errors and not (force or dry_run):
        from ..data.audit import error_summary

        raise UserError(f"the data audit found errors: {error_summary(result)}. Fix the data (`tuneline data check FILE --fix DIR` "
                        "writes cleaned copies) or train anyway with --force")
    return result


def _train_and_finish(ctx: RunContext) -> RunResult | None:
    """Builds the model, trains it and, on rank 0, finishes the run (None on the other ranks)."""
    model, state = _train_model(ctx, _build_model(ctx))
    if not distributed.is_main():
        return None  # rank 0 writes the model, evaluates and reports
    return finish_run(ctx, model, state)


def _build_model(ctx: RunContext):
    from transformers import set_seed

    recipe = ctx.recipe
    # Seed before the model is built: the new head's initial weights depend on it.
    set_seed(recipe.train.seed)
    model = _new_model(ctx)
    trainable, total = count_parameters(model)
    print(f"Model {recipe.model} ({ctx.source.kind}), method {recipe.method}: trainable parameters "
          f"{trainable:,} of {total:,} ({100 * trainable / total:.2f} %)", flush=True)
    p = ctx.prepared
    print(f"Data: {len(p.train)} train, {len(p.validation)} validation, {len(p.test)} test rows; "
          f"precision {ctx.precision} on {_where()}", flush=True)
    if distributed.is_main():
        ctx.run.update_manifest(parameters={"trainable": trainable, "total": total})
    return model


def _new_model(ctx: RunContext):
    """The base model with the task's head, made ready by the recipe's method."""
    model = ctx.task.load_model(ctx.source.path, ctx.recipe, ctx.tokenizer, ctx.prepared.labels)
    return apply_method(model, ctx.recipe, ctx.task)


def _train_model(ctx: RunContext, model) -> tuple[object, dict]:
    """Runs the loop; returns the trained model as a plain one (None on ranks > 0 of a sharded
    run) and the loop state."""
    accelerator = _accelerator(ctx.precision)
    trainer = Trainer(ctx, model, accelerator)
    print(f"Training {trainer.plan.total_steps} steps ({trainer.plan.steps_per_epoch} per epoch) -> {ctx.run.path}",
          flush=True)
    with faults.graceful_interrupt(enabled=not distributed.active()):
        state = trainer.run_loop(resume=ctx.resume)
    if trainer.sharded:
        return _unsharded_model(trainer, ctx, state), state
    return accelerator.unwrap_model(trainer.model), state


def _unsharded_model(trainer, ctx: RunContext, state: dict):
    """The trained model as a plain one on rank 0 (None elsewhere), for finish_run: rebuilt from the
    source like at the start, then given the trained weights. finish_run restores the best
    checkpoint's weights anyway; the final ones are gathered only when there is none."""
    from .checkpoint import load_trainable_state, trainable_state

    main = distributed.is_main()
    final = trainable_state(trainer.model, keep=main) if state["best_step"] is None else {}
    if not main:
        return None
    trainer.root = trainer.model = trainer.optimizer = None  # drop the shards before the full copy is built
    model = _new_model(ctx)
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
