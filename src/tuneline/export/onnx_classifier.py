"""`--format onnx`: a classifier as one ONNX graph (torch.onnx, the torch.export-based exporter),
with its tokenizer and label map beside it.

Inputs are `input_ids` and `attention_mask` (int64, batch x sequence, both dynamic), the
output `logits` (batch x labels): the same two inputs tuneline's own predict feeds. The proof
is onnxruntime against PyTorch on every row of the run's test split, in the same padded batches.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.batching import pad_batch, sorted_batches
from ..errors import UserError
from ..runs import atomic_write_json
from .compare import prediction_agreement, within

MODELS = "classifiers"  # what the format is for, in the error for a task without it
QUANTIZATIONS = ("f32",)
TOLERANCE = {"min_label_agreement": 1.0, "max_prob_diff": 1e-4}
BATCH = 32


class _Logits(torch.nn.Module):
    """The model's logits alone: a graph with one named output instead of a ModelOutput."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _need_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"--format onnx needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                        "pip install 'tuneline[export]'") from None


def write_onnx(model, path: Path, max_positions: int) -> None:
    import contextlib
    import io
    import logging

    model = model.eval()
    example = torch.tensor([[101, 2023, 2003, 102, 0, 0], [101, 2307, 2000, 2023, 2003, 102]])
    example = example.clamp(max=model.config.vocab_size - 1)
    mask = (torch.arange(example.shape[1]) < torch.tensor([[4], [6]])).long()
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=max_positions)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    # The exporter reports each stage on stdout and warns about torchvision ops a text model
    # never uses; our own progress line is enough.
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(_Logits(model), (), kwargs={"input_ids": example, "attention_mask": mask},
                                        input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                        dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
    finally:
        onnx_log.setLevel(level)
    program.save(str(path), external_data=False)


def onnx_logits(path: Path, input_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = None
    for idx in sorted_batches([len(x) for x in input_ids], BATCH):
        ids, mask = pad_batch([input_ids[i] for i in idx], pad_id)
        logits = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
        if out is None:
            out = torch.empty(len(input_ids), logits.shape[-1])
        out[idx] = logits
    return out


def export(source, out: Path, quantize: list[str], samples: int) -> dict:
    if quantize != ["f32"]:
        raise UserError("--format onnx: the graph is fp32; leave out --quantize")
    _need_onnx()
    source.require_merged("--format onnx")
    loaded = source.loaded
    model, tok = loaded.model, loaded.tokenizer
    max_positions = min(getattr(model.config, "max_position_embeddings", 512) or 512, 8192)
    print("Writing model.onnx ...", flush=True)
    try:
        write_onnx(model, out / "model.onnx", max_positions)
    except UserError:
        raise
    except Exception as e:  # the exporter's errors are long; the first line says what failed
        raise UserError(f"--format onnx: torch.onnx could not export this {model.config.model_type} "
                        f"classifier: {str(e).splitlines()[0][:300]}") from None
    tok.save_pretrained(str(out))
    model.config.save_pretrained(str(out))  # the label map (id2label) travels in config.json
    atomic_write_json(out / "labels.json", {"labels": loaded.labels, "max_length": loaded.max_length,
                                            "inputs": ["input_ids", "attention_mask"], "output": "logits"})
    ids = source.sample_token_ids(10**9, max_tokens=loaded.max_length)
    print(f"Checking: onnxruntime vs PyTorch on all {len(ids)} test rows ...", flush=True)
    ours = loaded.task.logits(model, ids, tok.pad_token_id, BATCH, next(model.parameters()).device)
    figures = prediction_agreement(ours, onnx_logits(out / "model.onnx", ids, tok.pad_token_id))
    figures.update(tolerance=TOLERANCE, passed=within(figures, TOLERANCE))
    files = sorted(f.name for f in out.iterdir() if f.is_file())
    import onnx

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    return {"files": files, "parity": {"model.onnx": figures},
            "details": {"opset": graph.opset_import[0].version, "inputs": ["input_ids", "attention_mask"],
                        "output": "logits", "compared_on": f"all {len(ids)} test rows, batches of {BATCH}",
                        "labels": list(loaded.labels)}}
