"""Each LoRA adapter as one autograd node, its dropout inside (training/fused_lora.py): the same
values and gradients as PEFT's dropout, lora_A and lora_B with the same mask, fewer saved bytes and
autograd nodes, unchanged weights' names, and checkpointing's recompute drawing the same masks."""

from __future__ import annotations

import pytest
import torch

from tuneline.training import fused_lora
from tuneline.training.fused_lora import drawn_keep, fuse_lora, keep_mask

from conftest import saved_bytes

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora(tiny_llama, dropout=0.1):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=dropout))
    for n, p in model.named_parameters():  # a trained adapter: B no longer zero, so A gets gradients
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return model


def _recording_masks(monkeypatch) -> list:
    """Every mask the fused layers draw, in order (forward draws; backward redraws are equal)."""
    drawn = []
    real = fused_lora.keep_mask

    def record(shape, p, seed, device):
        mask = real(shape, p, seed, device)
        drawn.append(mask)
        return mask

    monkeypatch.setattr(fused_lora, "keep_mask", record)
    return drawn


def _as_on_a_gpu(monkeypatch) -> None:
    """The GPU's way on this CPU: masks drawn by `drawn_keep` and redrawn in backward."""
    monkeypatch.setattr(fused_lora, "KEEPS_MASK", ())
    monkeypatch.setattr(fused_lora, "keep_lanes", lambda shape, p, gen: drawn_keep(shape, p, gen, torch.device("cpu")))


@pytest.mark.parametrize("keeps_mask", [True, False], ids=["mask kept (CPU)", "mask redrawn (GPU)"])
def test_values_and_gradients_equal_dropout_then_linear_with_the_same_mask(tiny_llama, monkeypatch, keeps_mask):
    if not keeps_mask:
        _as_on_a_gpu(monkeypatch)
    model = _lora(tiny_llama)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert fuse_lora(model) == 7 * len(model.base_model.model.model.layers)
    model.train()
    drawn = _recording_masks(monkeypatch)
    x = torch.randn(2, 5, layer.in_features, requires_grad=True)
    out = layer(x)
    out.square().sum().backward()
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    got = (out.detach(), x.grad.clone(), a.weight.grad.clone(), b.weight.grad.clone())

    keep = drawn[0]
    p = layer.fused_adapter[1]
    x2 = x.detach().clone().requires_grad_(True)
    a2, b2 = a.weight.detach().clone().requires_grad_(True), b.weight.detach().clone().requires_grad_(True)
    dropped = torch.where(keep, x2, 0) / (1 - p)
    ref = layer.base_layer(x2) + (dropped @ a2.T @ b2.T) * layer.scaling["default"]
    ref.square().sum().backward()
    for g, r in zip(got, (ref.detach(), x2.grad, a2.grad, b2.grad)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert len(drawn) == (1 if keeps_mask else 2)
    assert all(torch.equal(m, keep) for m in drawn[1:])  # backward redrew the very same mask


def test_masks_follow_torch_manual_seed_and_keep_one_minus_p():
    shape = torch.Size([64, 512])
    a = keep_mask(shape, 0.1, 1234, torch.device("cpu"))
    assert torch.equal(a, keep_mask(shape, 0.1, 1234, torch.device("cpu")))
    assert not torch.equal(a, keep_mask(shape, 0.1, 1235, torch.device("cpu")))
    assert abs(a.float().mean().item() - 0.9) < 0.01
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    g = drawn_keep(shape, 0.1, gen(1234), torch.device("cpu"))  # the GPU's draw, run on the CPU
    assert g.dtype == torch.bool and torch.equal(g, drawn_keep(shape, 0.1, gen(1234), torch.device("cpu")))
    assert abs(g.float().mean().item() - 0.9) < 0.01



def test_a_fused_layers_masks_follow_torch_manual_seed(tiny_llama):
    model = _lora(tiny_llama, dropout=0.5)
    fuse_lora(model)
    model.train()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.ones(3, layer.in_features)
    torch.manual_seed(3)
    y1 = layer(x)
    torch.manual_seed(3)
    assert torch.equal(y1, layer(x))
    assert not torch.equal(y1, layer(x))


def test_eval_mode_and_names_are_unchanged(tiny_llama):
    model, plain = _lora(tiny_llama), _lora(tiny_llama)
    keys = set(model.state_dict())
    fuse_lora(model)
    assert set(model.state_dict()) == keys
    model.eval(), plain.eval()
    ids = torch.randint(0, 100, (2, 9))
    torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_fused_keeps_fewer_activation_bytes(tiny_llama):
    model, plain = _lora(tiny_llama), _lora(tiny_llama)
    fuse_lora(model)
    model.train(), plain.train()
    ids = torch.randint(0, 100, (2, 64))
    fused, unfused = saved_bytes(model, ids), saved_bytes(plain, ids)
    assert fused < unfused * 0.8, (fused, unfused)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_gradients_replay_under_checkpointing(tiny_llama, checkpointing, monkeypatch):
    """Recomputing a block under activation checkpointing draws the same masks (the seed comes
    from torch's CPU generator, which checkpointing restores): gradients equal the run without."""
    _as_on_a_gpu(monkeypatch)  # the redrawn masks are what replay must match
    grads = []
    for ckpt in (False, checkpointing):
        model = _lora(tiny_llama)
        fuse_lora(model)
        if ckpt:
            model.base_model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        torch.manual_seed(7)
        ids = torch.randint(0, 100, (2, 12))
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


def test_without_dropout_the_fused_adapter_matches_peft_and_keeps_less_with_lean_layers(tiny_llama):
    """lora.dropout 0: the fused lora_A (p = 0) gives PEFT's values and gradients, and keeps the
    rebuildable inputs of lean_activations.py as their producers' tensors, not as copies."""
    import copy

    from tuneline.training.lean_activations import lean_activations

    plain = _lora(tiny_llama, dropout=0.0)
    lean_activations(plain)
    fused = copy.deepcopy(plain)
    assert fuse_lora(fused) == 7 * len(fused.base_model.model.model.layers)
    ids = torch.randint(0, 100, (2, 12))
    grads = []
    for model in (fused, plain):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss, g), (ref_loss, ref) = grads
    assert torch.equal(loss, ref_loss)
    for n in g:
        torch.testing.assert_close(g[n], ref[n], rtol=1e-5, atol=1e-7, msg=n)
    assert saved_bytes(fused, ids) < saved_bytes(plain, ids)


def test_an_adapted_projection_is_fewer_autograd_nodes(tiny_llama):
    """What the host pays per adapter in backward: PEFT's modules make a node each (dropout, lora_A,
    lora_B, the scaling, the sum); fused, the adapter is one node beside the base layer's."""
    plain, fused = _lora(tiny_llama), _lora(tiny_llama)
    fuse_lora(fused)

    def nodes(model) -> int:
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        layer.train()
        out = layer(torch.randn(2, 5, layer.in_features))  # x needs no grad: only the layer's own nodes
        seen, todo = set(), [out.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is not None and fn not in seen:
                seen.add(fn)
                todo += [f for f, _ in fn.next_functions]
        return len(seen)

    assert nodes(fused) < nodes(plain) - 2, (nodes(fused), nodes(plain))
