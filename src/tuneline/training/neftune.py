"""NEFTune (Jain et al. 2023, as in TRL and the Transformers Trainer): uniform noise on the input
embeddings while training, reported to give instruction-tuned models fuller answers (it did not
lengthen SmolLM2's Dolly answers here: benchmarks/README.md). The noise is off in evaluation and
generation (the hook checks the module's training flag)."""

from __future__ import annotations

import torch


def enable_neftune(model: torch.nn.Module, alpha: float):
    """Add the noise hook to the model's input embeddings; returns the hook handle."""
    embeddings = model.get_input_embeddings()

    def add_noise(module, args, output):
        if not module.training:
            return output
        # scale alpha / sqrt(L * d), as in the paper, with L the padded length of the batch
        bound = alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.empty_like(output).uniform_(-bound, bound)

    return embeddings.register_forward_hook(add_noise)
