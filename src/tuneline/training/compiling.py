"""train.compile: each transformer block compiled with torch.compile for the training steps.

A short GPU step is bound by launching hundreds of small kernels per block (norms, rotary
embedding, SwiGLU, LoRA's scaling and sums), not by the matmuls. TorchInductor fuses them into
few kernels; blocks are compiled one by one (as torchtune does) so a block's graph is traced once
and reused by every block of the same code, and activation checkpointing still wraps each block.

Only the training steps run compiled. Evaluation and generation run the plain blocks: decoding
changes shapes every step, and the recompiles would cost more than they save (`eager()`).
The first step pays the compile (seconds to minutes); it is compiled for any batch shape at once
(dynamic=True): padded or packed batches change width nearly every step, and a first static
graph would only be thrown away at the second step (a tiny Llama on this CPU: 8 s static, then 36
s more for the dynamic one).

Call points: `Trainer.__init__` compiles after the checkpointing plan; `Trainer.evaluate` and the
end of `run_loop` switch the blocks back to eager. Nothing is kept for resume. The custom dropout
paths (fused_lora.py, fast_dropout.py) are not installed under compile: their seeded masks
read a random number on the host, which would cut every block's graph at each adapter, and
Inductor generates its own fused dropout.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .methods.layers import find_blocks

BACKEND = "inductor"  # tests run "aot_eager": the same tracing and autograd split, no code generation


class CompiledBlocks:
    """The model's blocks with their compiled forward, switchable back to eager."""

    def __init__(self, model: nn.Module):
        self.blocks = list(find_blocks(model) or [])
        for block in self.blocks:
            # nn.Module.compile keeps the module (state-dict names unchanged) and stores the
            # compiled call in _compiled_call_impl, which is what `on`/`off` swap
            block.compile(backend=BACKEND, dynamic=True)
        self._compiled = [b._compiled_call_impl for b in self.blocks]

    def __len__(self) -> int:
        return len(self.blocks)

    def on(self) -> None:
        for block, call in zip(self.blocks, self._compiled):
            block._compiled_call_impl = call

    def off(self) -> None:
        for block in self.blocks:
            block._compiled_call_impl = None

    @contextmanager
    def eager(self):
        self.off()
        try:
            yield
        finally:
            self.on()


def compile_blocks(model: nn.Module, enabled: bool, sharded: bool) -> CompiledBlocks | None:
    if not enabled:
        return None
    if sharded:
        from ..errors import UserError

        raise UserError("train.compile with train.sharding: fsdp is not supported yet; set train.compile: false")
    compiled = CompiledBlocks(model)
    return compiled if len(compiled) else None
