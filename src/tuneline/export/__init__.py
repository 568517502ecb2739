"""Exports of a finished run that other tools load: `hf` (Transformers folder + PEFT adapter),
`gguf` (llama.cpp / Ollama, Llama-family chat models), `onnx` (classifiers, onnxruntime).

Every export is written into a temporary folder beside `out`, proved against the run's own
model (figures in manifest.json), given a model card (README.md) and a manifest, and only
then moved into place: a failed or interrupted export leaves nothing behind and replaces nothing.
"""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path

from ..errors import RunFailed, UserError
from ..runs import atomic_write_json, atomic_write_text, package_versions, staged_dir
from . import hf, llama_gguf, onnx_classifier
from .card import model_card
from .source import open_source, sha256_file

FORMATS = {"hf": hf, "gguf": llama_gguf, "onnx": onnx_classifier}
DEFAULT_QUANTIZE = {"hf": ["f32"], "gguf": ["f16"], "onnx": ["f32"]}
MANIFEST_VERSION = 1


def _check_args(run: Path, fmt: str, out: Path, quantize: list[str], overwrite: bool) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r}; allowed: {', '.join(FORMATS)}")
    allowed = FORMATS[fmt].QUANTIZATIONS
    bad = [q for q in quantize if q not in allowed]
    if bad:
        raise UserError(f"--quantize {bad[0]}: not available for --format {fmt}; allowed: {', '.join(allowed)}")
    if len(set(quantize)) != len(quantize):
        raise UserError("--quantize: each value once")
    run_abs, out_abs = run.resolve(), out.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents:
        raise UserError(f"--out {out}: that would replace the run folder itself; give a new folder")
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out}: a file with that name exists; give a folder")
        if not overwrite:
            raise UserError(f"--out {out}: exists; give --overwrite to replace it, or another folder")


def _check_task(source, fmt: str) -> None:
    """The format must suit the run's task (its `export_formats`)."""
    from ..tasks import TASKS, task_class

    task = source.loaded.task
    if fmt in task.export_formats:
        return
    fits = [name for name in TASKS if fmt in task_class(name).export_formats]
    raise UserError(f"{source.path}: --format {fmt} is for {FORMATS[fmt].MODELS} (task {' or '.join(fits)}); "
                    f"this run is {task.name}. Use --format {' or '.join(task.export_formats)}")


def _versions() -> dict:
    out = package_versions()
    for name in ("gguf", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _headline(ev: dict | None) -> dict | None:
    if not ev:
        return None
    from ..reporting.tables import headline_keys

    keys = headline_keys(ev)
    return {side: {k: ev[side][k] for k in keys if k in ev.get(side, {})} for side in ("tuned", "baseline")} | {
        "rows": ev.get("n")}


def _task_options(source) -> dict:
    """The task's own options as the run kept them (`generate: {...}`), for a task that has some."""
    section = source.loaded.task.options_section
    return {section: source.info.get(section)} if section else {}


def _source_record(source) -> dict:
    run_json = source.loaded.run.read_manifest()
    return {
        "run": str(source.path.resolve()),
        "status": run_json.get("status"),
        "task": source.task,
        "method": source.info.get("method"),
        "base_model": source.info.get("base_model"),
        "labels": source.info.get("labels"),
        **_task_options(source),
        "data": run_json.get("data"),
        "rows": run_json.get("rows"),
        "test_metrics": _headline(source.eval_result()),
        "files": source.file_hashes(),
    }


def _file_table(folder: Path) -> dict:
    return {str(f.relative_to(folder)): {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "manifest.json"}


def _failures(parity: dict) -> list[str]:
    out = []
    for name, fig in parity.items():
        if fig.get("passed") is False:
            figures = ", ".join(f"{k.removeprefix('min_')} {fig.get(k.removeprefix('min_')):.4g} (limit {v})"
                                for k, v in fig.get("tolerance", {}).items())
            if fig.get("label_map_matches") is False:
                figures += ", label map differs"
            out.append(f"{name}: {figures}")
    return out


def export_run(run: str | Path, fmt: str, out: str | Path, quantize: list[str] | None = None,
               overwrite: bool = False, samples: int = 8) -> dict:
    """Export a finished run folder; returns the manifest (also written as out/manifest.json)."""
    run, out = Path(run), Path(out)
    quantize = list(quantize) if quantize else list(DEFAULT_QUANTIZE.get(fmt, []))
    _check_args(run, fmt, out, quantize, overwrite)
    if samples < 1:
        raise UserError("--samples: at least 1")
    source = open_source(run)
    _check_task(source, fmt)
    started = time.time()
    with staged_dir(out) as tmp:
        result = FORMATS[fmt].export(source, tmp, quantize, samples)
        manifest = {
            "tuneline_export": MANIFEST_VERSION,
            "format": fmt,
            "quantize": quantize,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": _source_record(source),
            "parity": result["parity"],
            "passed": not _failures(result["parity"]),
            "details": result["details"],
            "files": result["files"],
            "versions": _versions(),
        }
        card, card_origin = model_card(fmt, source, manifest)
        atomic_write_text(tmp / "README.md", card)
        manifest["model_card"] = {"file": "README.md", "origin": card_origin}
        manifest["files"] = _file_table(tmp)
        manifest["seconds"] = round(time.time() - started, 1)
        atomic_write_json(tmp / "manifest.json", manifest)
        failures = _failures(result["parity"])
        if failures:  # leaving the block with an error removes the staged folder and keeps `out`
            raise RunFailed(f"the export does not match the run's model closely enough, so it was not written "
                            f"to {out}: " + "; ".join(failures))
    return manifest
