"""`tuneline export`: hand a finished run to other tools (Transformers, llama.cpp / Ollama, onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from .app import app


@app.command("export", epilog="Examples:\n\n  tuneline export runs/support -f gguf -o out/support-gguf -q f16 -q q8_0\n\n  tuneline export runs/reviews -f onnx -o out/reviews-onnx")
def export(
    run: Path = typer.Argument(..., help="run folder"),
    fmt: str = typer.Option(..., "--format", "-f", metavar="FORMAT", help="hf | gguf | onnx"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (must not exist, unless --overwrite)"),
    quantize: List[str] = typer.Option([], "--quantize", "-q",
                                       help="gguf: f16 (default) | q8_0, repeatable; hf: f32 (default) | f16"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out folder"),
    samples: int = typer.Option(8, "--samples", help="test conversations the chat-model checks run on"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
):
    """Export a run: merged model + tokenizer (hf), GGUF + Ollama Modelfile (gguf), ONNX graph (onnx).
    Each export is checked against the run's model; the figures go into manifest.json and the model card."""
    from ..export import export_run
    from ..export.card import parity_lines

    manifest = export_run(run, fmt, out, quantize=quantize, overwrite=overwrite, samples=samples)
    if as_json:
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
        return
    print(f"\nAgreement with the run's model ({manifest['details'].get('compared_on', '')}):")
    for line in parity_lines(manifest["parity"]):
        print("  " + line[2:])
    print(f"\nExport ({fmt}): {out}")
    for name, f in manifest["files"].items():
        print(f"  {name:<32} {f['bytes'] / 1e6:9.2f} MB")
