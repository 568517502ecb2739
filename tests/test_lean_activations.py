"""Leaner saved activations (training/lean_activations.py): the swapped RMSNorm and gated MLP give
the same values and gradients as transformers' own, keep the counted bytes less, replay under
checkpointing, and leave modules with other math alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tuneline.training import fused_lora
from tuneline.training.frozen_precision import cast_frozen
from tuneline.training.lean_activations import lean_activations
from tuneline.training.fused_lora import fuse_lora
from tuneline.training.loop import Callback

from conftest import saved_bytes

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HIDDEN, INTER, LAYERS = 32, 64, 2


def _model(tiny_llama, method: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.1))
        for n, p in model.named_parameters():  # a trained adapter: B no longer zero, so A gets gradients
            if "lora_B" in n:
                nn.init.normal_(p, std=0.05)
        fuse_lora(model)  # as the loop does: the fused adapters keep the rebuild forms
    return model


def _step(model, ids, dtype=torch.float32) -> tuple[torch.Tensor, dict]:
    model.train()
    torch.manual_seed(7)  # the same dropout masks for both models
    ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_same_loss_and_gradients_as_transformers(tiny_llama, method):
    plain = _model(tiny_llama, method)
    lean = copy.deepcopy(plain)
    assert lean_activations(lean) == (2 * LAYERS + 1, LAYERS)  # two norms a block and the final one
    ids = torch.randint(0, 1000, (2, 24))
    (loss, grads), (ref_loss, ref_grads) = _step(lean, ids), _step(plain, ids)
    assert torch.equal(loss, ref_loss)  # the forward is bit-identical
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-7, msg=n)
    assert set(lean.state_dict()) == set(plain.state_dict())


def test_same_gradients_in_bf16_with_frozen_weights_cast(tiny_llama):
    """As on a GPU: bf16 autocast, frozen weights in bf16, the residual stream in bf16."""
    plain = _model(tiny_llama, "lora")
    cast_frozen(plain, torch.bfloat16)
    lean = copy.deepcopy(plain)
    lean_activations(lean)
    ids = torch.randint(0, 1000, (2, 24))
    (loss, grads), (ref_loss, ref_grads) = _step(lean, ids, torch.bfloat16), _step(plain, ids, torch.bfloat16)
    assert torch.equal(loss, ref_loss)
    for n in grads:  # bf16 rounding of a few intermediates differs (fp32 math, one bf16 cast less)
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=2e-2, atol=1e-4, msg=n)


def test_keeps_the_counted_bytes_less(tiny_llama, monkeypatch):
    """Per token under bf16, exactly: in each block silu's output and the product (2 x INTER x 2
    bytes); each norm that backward goes through keeps its input in bf16 and rebuilds its output,
    instead of an fp32 copy and the output (HIDDEN x 4 bytes less); the final norm's output was
    not kept (the frozen head needs no input), so it saves HIDDEN x 2; the first norm needs no
    backward (the embeddings are frozen) but its 1/rms (4 bytes) is kept to rebuild its output."""
    monkeypatch.setattr(fused_lora, "KEEPS_MASK", ())  # as on a GPU: the masks are redrawn
    plain = _model(tiny_llama, "lora")
    cast_frozen(plain, torch.bfloat16)
    lean = copy.deepcopy(plain)
    lean_activations(lean)
    ids = torch.randint(0, 1000, (2, 64))
    plain.train(), lean.train()
    saved = saved_bytes(plain, ids, torch.bfloat16) - saved_bytes(lean, ids, torch.bfloat16)
    per_token = LAYERS * 2 * INTER * 2 + (2 * LAYERS - 1) * HIDDEN * 4 + HIDDEN * 2 - 4
    assert saved == ids.numel() * per_token, saved / ids.numel()


def test_gradients_replay_under_checkpointing(tiny_llama, monkeypatch):
    monkeypatch.setattr(fused_lora, "KEEPS_MASK", ())
    ids = torch.randint(0, 1000, (2, 16))
    plain = _model(tiny_llama, "lora")
    lean = copy.deepcopy(plain)
    lean_activations(lean)
    lean.base_model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lean.enable_input_require_grads()
    (loss, grads), (ref_loss, ref_grads) = _step(lean, ids), _step(plain, ids)
    assert torch.equal(loss, ref_loss)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-7, msg=n)


class _OnePlusNorm(nn.Module):
    """Gemma's RMSNorm: scaled by (1 + weight), so not the lean norm's math."""

    def __init__(self, width):
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(torch.zeros(width)), 1e-6

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
                * (1.0 + self.weight.float())).to(x.dtype)


class _GeluMLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(width, 2 * width), nn.Linear(width, 2 * width)
        self.down_proj, self.act_fn = nn.Linear(2 * width, width), nn.GELU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_modules_with_other_math_keep_their_forward():
    model = nn.Sequential(_OnePlusNorm(8), _GeluMLP(8))
    assert lean_activations(model) == (0, 0)
    assert type(model[0]) is _OnePlusNorm and type(model[1]) is _GeluMLP


class _Classes(Callback):
    """Records the norm and MLP classes the loop trains with."""

    names: set = set()

    def on_train_start(self, trainer, state):
        self.names = {type(m).__name__ for m in trainer.model.modules() if "Norm" in type(m).__name__
                      or "MLP" in type(m).__name__}


def test_the_loop_trains_with_them_as_with_transformers_own(tmp_path, tiny_llama, monkeypatch):
    import json

    import tuneline
    from tuneline.training import loop

    from conftest import say_chats, write_jsonl, write_recipe

    write_jsonl(tmp_path / "train.jsonl", say_chats(16, step=5, mod=17, answers=4))
    losses, classes = {}, {}
    for lean in (True, False):
        if not lean:
            monkeypatch.setattr(loop, "lean_activations", lambda model: (0, 0))
        recipe = write_recipe(tmp_path / f"{lean}.yaml", task="generate", model=str(tiny_llama), method="lora",
                              data={"train": "train.jsonl", "test": "train.jsonl"},
                              train={"max_steps": 3, "lr": 1e-3, "batch_size": 8, "max_length": 48, "log_every": 1,
                                     "precision": "fp32"}, lora={"dropout": 0.1},
                              eval={"max_samples": 2}, generate={"max_new_tokens": 2},
                              output=str(tmp_path / f"run-{lean}"))
        seen = _Classes()
        path = tuneline.train(recipe, callbacks=[seen]).path
        classes[lean] = seen.names
        losses[lean] = [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()
                        if json.loads(line)["type"] == "train"]
    assert classes[True] == {"LeanLlamaRMSNorm", "LeanLlamaMLP"} and classes[False] == {"LlamaRMSNorm", "LlamaMLP"}
    assert len(losses[True]) == 3
    for a, b in zip(losses[True], losses[False]):
        assert a == pytest.approx(b, rel=1e-5)
