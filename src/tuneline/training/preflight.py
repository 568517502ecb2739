"""Checks run before anything is written: the output folder, the model's config against the
task, method and max length, the evaluation's columns. A mistake found here costs seconds, not a
half-written run folder or an hour of training that fails at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .. import hardware
from ..errors import UserError
from .methods import check_method, get_method

# Encoder-only families: Transformers gives some of them a causal-LM class (BertLMHeadModel),
# but their weights were never trained to predict the next token, so a causal-LM task would learn from noise.
ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                "mpnet", "camembert", "modernbert", "ernie", "megatron-bert", "roformer", "nomic_bert"}
# Families whose positions are a learned table: a longer input indexes past its end and crashes mid-run.
ABSOLUTE_POSITIONS = ENCODER_ONLY | {"gpt2", "gpt_neo", "opt", "biogpt", "xglm"}
# RoBERTa-style models start positions after the padding index.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}
MARGIN = 64 << 20  # bytes kept free besides the estimate: metrics, report, temp files


def check_output_path(out: Path) -> None:
    """The output is a folder we can create and write into. Runs before the existing-run check."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output: {out} is a file, not a folder; choose another output folder (-o DIR)")
    base = _existing_ancestor(out)
    if not base.is_dir():
        raise UserError(f"output: {base} is a file, so {out} cannot be created; choose another output folder (-o DIR)")
    try:
        # access() says yes to root even on a read-only mount: try for real, leave nothing behind
        fd, probe = tempfile.mkstemp(dir=base, prefix=".tuneline-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output: cannot write in {base} ({e.strerror}); choose a writable output folder "
                        f"(-o DIR) or fix its permissions") from None


def check_model(recipe, task, source) -> None:
    """What the model's config alone tells (task, method, length, precision): before any data is
    read, so an encoder given to a chat task is refused in seconds, not after the data audit."""
    config = _config(recipe, source)
    _check_task_model(recipe, task, config)
    _check_max_length(recipe, config)
    _check_precision(recipe)
    check_method(recipe, config)


def check(recipe, task, source, prepared, out: Path, *, writes: bool = True) -> None:
    """What needs the prepared data or the disk, once the data is read."""
    _check_slices(recipe, prepared)
    _check_weights_readable(recipe, source)
    if writes:
        check_disk_space(recipe, source, Path(out))


def _config(recipe, source):
    from ..models import load_config

    return load_config(source.path, recipe.trust_remote_code)


def _check_task_model(recipe, task, config) -> None:
    mtype = getattr(config, "model_type", "")
    if task.causal_lm and mtype in ENCODER_ONLY and not getattr(config, "is_decoder", False):
        raise UserError(f"model: {recipe.model} is an encoder ({mtype}), which cannot write text; task {task.name} "
                        f"needs a decoder such as smollm2-135m-instruct, or use task: classify with this model")
    if recipe.trust_remote_code:
        return  # its own code decides which heads exist
    import transformers

    # the auto class's table of architectures (model_type -> model class) it can build
    mapping = getattr(getattr(transformers, task.model_class), "_model_mapping", None)
    if mtype and mapping is not None and type(config) not in mapping:
        raise UserError(f"model: {recipe.model} ({mtype}) has no head for task {task.name} in Transformers "
                        f"({task.model_class} cannot build it); choose another model for task {task.name}")


def _check_max_length(recipe, config) -> None:
    mtype = getattr(config, "model_type", "")
    if mtype not in ABSOLUTE_POSITIONS and getattr(config, "position_embedding_type", None) != "absolute":
        return  # rotary / relative positions: longer inputs run (quality may drop past the training length)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit:
        return
    limit -= POSITION_OFFSET.get(mtype, 0)
    if recipe.train.max_length > limit:
        raise UserError(f"train.max_length: {recipe.train.max_length} is more than the {limit} positions "
                        f"{recipe.model} has learned; set train.max_length to {limit} or less")


def _check_precision(recipe) -> None:
    if recipe.train.precision == "fp16" and hardware.device_type() == "cpu":
        raise UserError("train.precision: fp16 needs a GPU; use auto, fp32 or bf16 on a CPU")


def _check_weights_readable(recipe, source) -> None:
    """A damaged or hostile weights file fails here, before --overwrite removes the old run: a
    safetensors header is read alone (no tensor data); a PyTorch file is opened with
    weights_only=True and mmap, so no code runs and nothing is copied into memory."""
    folder = Path(source.path)
    if not folder.is_dir():
        return  # a hub id: Transformers downloads and checks it
    files = sorted(folder.glob("*.safetensors"))
    try:
        if files:
            from safetensors import safe_open

            for f in files:
                with safe_open(str(f), framework="pt") as st:
                    st.keys()
            return
        import torch

        for f in sorted(folder.glob("*.bin")):
            torch.load(f, weights_only=True, mmap=True, map_location="cpu")
    except Exception as e:  # SafetensorError, UnpicklingError, RuntimeError for a cut file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"model: the weights in {folder} cannot be read ({type(e).__name__}: {first}); the file "
                        f"is damaged, or a PyTorch file that would run code (refused). Download or convert the "
                        f"model again, as safetensors") from None


def _check_slices(recipe, prepared) -> None:
    records = getattr(prepared.test, "records", None) or []
    for column in recipe.eval.slices:
        if records and all(column not in r for r in records):
            raise UserError(f"eval.slices: column {column!r} is not in the test rows "
                            f"(columns: {', '.join(sorted(records[0]))}); name a column of the test data")


def estimate_bytes(recipe, source) -> int | None:
    """Disk a run needs: the final model, plus best and last checkpoints (as much as the method
    trains: full tuning keeps weights and two Adam moments). None when the weights are not local (a hub id)."""
    path = Path(source.path)
    if not path.is_dir():
        return None
    weights = sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    return int(weights * (1 + get_method(recipe.method).checkpoint_share)) + MARGIN


def check_disk_space(recipe, source, out: Path) -> None:
    need = estimate_bytes(recipe, source)
    if need is None:
        return
    base = _existing_ancestor(out)
    free = shutil.disk_usage(base).free
    if free < need:
        raise UserError(f"output: {free / 2**20:.0f} MiB free on the disk of {base}, and this run needs about "
                        f"{need / 2**20:.0f} MiB (final model and checkpoints); free some space or choose an "
                        f"output folder on another disk (-o DIR)")


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    return p
