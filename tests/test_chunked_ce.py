"""The chunked answer cross-entropy (tasks/chunked_ce.py) equals the one-pass one: value and gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneline.tasks.chunked_ce import answer_cross_entropy, chunk_tokens


def test_chunks_give_the_one_pass_loss_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(11, 16, requires_grad=True)
    labels = torch.randint(0, 50, (11,))
    results = []
    for chunk in (1000, 3):  # one pass; four chunks, the last of two tokens
        head.zero_grad()
        hidden.grad = None
        loss = answer_cross_entropy(head, hidden, labels, chunk=chunk)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), head.weight.grad.clone()))
    (a, ha, wa), (b, hb, wb) = results
    plain = F.cross_entropy(head(hidden).float(), labels)
    assert torch.allclose(a, plain) and torch.allclose(b, a, atol=1e-6)
    assert torch.allclose(hb, ha, atol=1e-6) and torch.allclose(wb, wa, atol=1e-6)


def test_chunk_size_follows_the_vocabulary():
    assert chunk_tokens(49152) == 2 ** 26 // 49152
    assert chunk_tokens(152064) < chunk_tokens(49152)
    assert chunk_tokens(10 ** 9) == 256


def test_scoring_without_gradients_chunks_too():
    """Under no_grad (validation, the test evaluation) the chunks run plainly: the same loss, and no
    logits computed at once than one chunk's (the widths of the head's outputs)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden, labels = torch.randn(11, 16), torch.randint(0, 50, (11,))
    widths = []
    head.register_forward_hook(lambda m, args, out: widths.append(out.shape[0]))
    with torch.no_grad():
        one = answer_cross_entropy(head, hidden, labels, chunk=1000)
        chunked = answer_cross_entropy(head, hidden, labels, chunk=3)
    torch.testing.assert_close(chunked, one, rtol=1e-6, atol=1e-6)
    assert widths == [11, 3, 3, 3, 2]
