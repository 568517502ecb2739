"""QLoRA's base: the frozen linear layers of the transformer blocks stored in 4 bits while the
adapter trains (`method: qlora`).

Each `nn.Linear` inside the block stack becomes a bitsandbytes `Linear4bit`: NF4 codes in blocks of
64 weights, their scales quantized once more (the QLoRA paper's "double quantization"), about 0.52
bytes a weight instead of 4 (fp32) or 2 (bf16). Every matmul dequantizes its weight to the compute
dtype; the backward pass keeps only the codes (bitsandbytes' matmul_4bit). Embeddings, norms and
the task head stay as loaded. bitsandbytes does this on CPUs too (plain torch there), so the same
path trains a 1.7B model in ~1 GB of weights on a laptop.

Call points: `quantize_base` from `methods.apply_method` (the method's `quantize` hook), before
PEFT wraps the layers: PEFT then builds its 4-bit LoRA layers (it reads `is_loaded_in_4bit`).
`dequantize_base` from `finish.save_final_model` before the merge: each 4-bit weight becomes an
fp32 `nn.Linear` holding exactly the values the adapter was trained against, so the merged
model is the trained one (the deltas added at full precision, as Unsloth merges).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .methods.layers import find_blocks

QUANT_TYPE = "nf4"  # normal-float codes fit normally distributed weights best (QLoRA paper)
BLOCKSIZE = 64  # bitsandbytes' default: one scale per 64 weights
# codes, 8-bit scales, and an fp32 scale per 256 of those (double quantization)
BYTES_PER_WEIGHT = 0.5 + 1 / BLOCKSIZE + 4 / (BLOCKSIZE * 256)


def bnb():
    """bitsandbytes, or a UserError that says how to get it."""
    try:
        import bitsandbytes
    except ImportError as e:
        raise UserError(f"method: qlora stores the base in 4 bits with bitsandbytes, which is not installed "
                        f"({e}); install it (pip install 'tuneline[qlora]') or use method: lora") from None
    return bitsandbytes


def check_quantizable(recipe, config) -> None:
    """Preflight (method check): bitsandbytes present, no sharding."""
    bnb()
    if recipe.train.sharding == "fsdp":
        raise UserError("train.sharding: fsdp does not shard 4-bit weights here; use method: lora with fsdp, "
                        "or qlora on one process per GPU (sharding: none)")


def block_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every plain nn.Linear inside the transformer blocks."""
    blocks = find_blocks(model)
    if blocks is None:
        return []
    return [(parent, name, child) for parent in blocks.modules() for name, child in parent.named_children()
            if type(child) is nn.Linear]


def quantize_base(model: nn.Module, recipe) -> nn.Module:
    """The blocks' linear layers in 4 bits, quantized on the device the run trains on."""
    from .. import hardware

    lib = bnb()
    layers = block_linears(model)
    if not layers:
        raise UserError(f"method: qlora: {recipe.model} has no linear layers in a block stack to quantize; "
                        "use method: lora")
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hardware.resolve_precision(recipe.train.precision),
                                                                  torch.float32)
    device = torch.device("cuda", torch.cuda.current_device()) if hardware.device_type() == "cuda" else "cpu"
    for parent, name, lin in layers:
        q = lib.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=compute,
                              compress_statistics=True, quant_type=QUANT_TYPE, device="meta")
        # one weight layout for training, dequantizing and merging: the CPU repack for inference
        # needs a kernel from the hub
        q.support_avx512bf16_for_cpu = False
        q.weight = lib.nn.Params4bit(lin.weight.data, requires_grad=False, blocksize=BLOCKSIZE,
                                     compress_statistics=True, quant_type=QUANT_TYPE, module=q).to(device)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        setattr(parent, name, q)
    _release_checkpoint_file(model)
    model.is_loaded_in_4bit = True  # PEFT builds its 4-bit LoRA layers on this flag
    return model


def _release_checkpoint_file(model: nn.Module) -> None:
    """The loader maps the checkpoint file into memory, and the mapping lives, with every page
    quantizing read, while any tensor views it: copies of the weights left as loaded (embeddings,
    norms, the head) let it go. SmolLM2-135M on a CPU: resident memory 948 -> 653 MiB."""
    for t in [*model.parameters(), *model.buffers()]:
        if not is_quantized(t) and t.device.type == "cpu":
            t.data = t.data.clone()


def is_quantized(param: torch.Tensor) -> bool:
    return getattr(param, "quant_state", None) is not None


def full_numel(param: torch.Tensor) -> int:
    """A parameter's weight count, a 4-bit one's as before packing (two codes a byte)."""
    return param.quant_state.shape.numel() if is_quantized(param) else param.numel()


def dequantize_base(model: nn.Module) -> int:
    """Every 4-bit layer back to an fp32 nn.Linear with the values it computed with; returns how many."""
    if not any(is_quantized(p) for p in model.parameters()):
        return 0  # not a qlora run: no bitsandbytes import
    lib = bnb()
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, lib.nn.Linear4bit)]
    for parent, name, q in swaps:
        weight = lib.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float()
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, device="meta")
        lin.weight = nn.Parameter(weight, requires_grad=False)
        if q.bias is not None:
            lin.bias = nn.Parameter(q.bias.data.float(), requires_grad=False)
        setattr(parent, name, lin)
    _plain_lora_layers(model)
    for m in model.modules():
        if getattr(m, "is_loaded_in_4bit", False):
            m.is_loaded_in_4bit = False
    return len(swaps)


def _plain_lora_layers(model: nn.Module) -> None:
    """PEFT's 4-bit LoRA layers, now around fp32 weights, as its plain ones: the 4-bit class merges
    by quantizing the sum again; the plain one adds the delta to the fp32 weight."""
    try:
        from peft.tuners.lora.bnb import Linear4bit as Lora4bit
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return
    for m in model.modules():
        if isinstance(m, Lora4bit):  # the training's fused subclass too (fused_lora.py)
            m.__class__ = LoraLinear
            m.is_target_conv_1d_layer = False
