"""Continuous batching (serve/continuous.py): answers that join and leave a running batch are the
answers `model.generate` gives each conversation alone, and the service's promises hold (stop
strings, lengths, cancellation, a version swap never cuts an answer)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tuneline.serve import kv_rows
from tuneline.serve.continuous import ContinuousGenerator
from tuneline.serve.model import GenOptions, ServedModel
from tuneline.serve.sampling import TextSoFar, next_tokens, top_p_filter

from serve_helpers import shared_generate_run

QUESTIONS = ["what is the code for apple", "hi", "what is the code for the sky above the sea at night and the day",
             "tell me the code for snow", "plum?"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    return shared_generate_run(tmp_path_factory, tiny_llama)


@pytest.fixture()
def served(run_dir):
    return ServedModel("v1", run_dir)


def make_generator(served) -> ContinuousGenerator:
    pool = ThreadPoolExecutor(max_workers=1)  # the one model thread, as the service's batcher has

    async def on_model_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return ContinuousGenerator(served, on_model_thread)


def alone(served, question: str, opts: GenOptions) -> dict:
    """`model.generate` on one conversation: the answer continuous batching must reproduce."""
    return served.generate(opts, [[{"role": "user", "content": question}]])[0][0]


async def until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)


def test_joining_and_leaving_rows_give_each_answer_generate_gives_alone(served):
    """Greedy: the first request runs alone for a few steps, the others join it mid-answer (prompts of
    different lengths, so the batch is re-padded) and leave at different lengths."""
    gen = make_generator(served)
    opts = [GenOptions(n, 0.0, 1.0) for n in (24, 3, 11, 7, 16)]

    async def main():
        first = asyncio.ensure_future(gen.answer([{"role": "user", "content": QUESTIONS[0]}], opts[0]))
        await until(lambda: gen.steps >= 3)
        rest = [gen.answer([{"role": "user", "content": q}], o) for q, o in zip(QUESTIONS[1:], opts[1:])]
        return [await first] + list(await asyncio.gather(*rest))

    results = asyncio.run(main())
    for q, o, (answer, version) in zip(QUESTIONS, opts, results):
        assert version == "v1"
        assert answer[0]["text"] == alone(served, q, o)["text"], q
        assert answer[0]["completion_tokens"] <= o.max_new_tokens
    assert gen.steps < sum(o.max_new_tokens for o in opts) - len(opts)  # steps were shared


def with_generate(served, **options) -> None:
    run = served.current.run
    run.recipe = run.recipe.model_copy(update={"generate": run.recipe.generate.model_copy(update=options)})


@pytest.mark.parametrize("system_prompt", [None, "You answer in colours only, briefly and kindly."])
def test_prompts_prefill_after_the_shared_prefix_only(served, system_prompt):
    """The chat template's opening and the system prompt are computed once per version; a prompt
    that starts with them (not all do: a conversation with its own system turn) prefills the rest."""
    with_generate(served, system_prompt=system_prompt)
    gen = make_generator(served)
    opts = GenOptions(10, 0.0, 1.0)
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS[:3]] + [
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": QUESTIONS[3]}]]

    async def main():
        first = asyncio.ensure_future(gen.answer(convs[0], opts))
        await until(lambda: gen.steps >= 2)
        return [await first] + list(await asyncio.gather(*(gen.answer(c, opts) for c in convs[1:])))

    results = asyncio.run(main())
    prefix = gen._prefix_of[1]
    assert prefix is not None and len(prefix.ids) >= 4
    run = served.current.run
    prompts = [run.task.prompt_ids(run.tokenizer, served.with_system(run, c)) for c in convs]
    assert [prefix.starts(p) for p in prompts] == [True, True, True, False]
    for conv, (answer, _) in zip(convs, results):
        assert answer[0]["text"] == served.generate(opts, [conv])[0][0]["text"]


def test_the_runs_loop_breakers_apply_as_in_generate(served):
    with_generate(served, repetition_penalty=1.8, no_repeat_ngram_size=2)
    gen = make_generator(served)
    opts = GenOptions(20, 0.0, 1.0)

    async def main():
        return await asyncio.gather(*(gen.answer([{"role": "user", "content": q}], opts) for q in QUESTIONS[:3]))

    for q, (answer, _) in zip(QUESTIONS, asyncio.run(main())):
        assert answer[0]["text"] == alone(served, q, opts)["text"]


def test_stop_strings_lengths_and_streamed_pieces(served):
    gen = make_generator(served)
    long = alone(served, QUESTIONS[0], GenOptions(16, 0.0, 1.0))["text"]
    stop = long.split()[3]  # a word inside the answer
    pieces = []

    async def main():
        return await asyncio.gather(
            gen.answer([{"role": "user", "content": QUESTIONS[0]}], GenOptions(16, 0.0, 1.0, (stop,))),
            gen.answer([{"role": "user", "content": QUESTIONS[0]}], GenOptions(5, 0.0, 1.0), pieces.append))

    (stopped, _), (short, _) = asyncio.run(main())
    assert stopped[0]["text"] == long[:long.find(stop)] and stopped[0]["finish_reason"] == "stop"
    assert stopped[0]["text"] == alone(served, QUESTIONS[0], GenOptions(16, 0.0, 1.0, (stop,)))["text"]
    assert short[0]["finish_reason"] == "length" and short[0]["completion_tokens"] == 5
    assert "".join(pieces).strip() == short[0]["text"]
    assert short[0]["prompt_tokens"] == alone(served, QUESTIONS[0], GenOptions(5, 0.0, 1.0))["prompt_tokens"]


def test_a_cancelled_answer_stops_and_the_others_go_on(served):
    import threading

    gen = make_generator(served)
    cancel = threading.Event()
    opts = GenOptions(60, 0.0, 1.0)

    async def main():
        cut = asyncio.ensure_future(gen.answer([{"role": "user", "content": QUESTIONS[0]}], opts,
                                               lambda piece: cancel.set(), cancel))
        other = asyncio.ensure_future(gen.answer([{"role": "user", "content": QUESTIONS[1]}], GenOptions(12, 0.0, 1.0)))
        return await cut, await other

    (cut, _), (other, _) = asyncio.run(main())
    assert cut[0]["completion_tokens"] < 5
    assert other[0]["text"] == alone(served, QUESTIONS[1], GenOptions(12, 0.0, 1.0))["text"]


def test_a_swap_lets_running_answers_finish_on_the_old_version(served, run_dir):
    gen = make_generator(served)
    opts = GenOptions(40, 0.0, 1.0)

    async def main():
        running = asyncio.ensure_future(gen.answer([{"role": "user", "content": QUESTIONS[0]}], opts))
        await until(lambda: gen.steps >= 2)
        await asyncio.to_thread(served.swap, "v2", run_dir)
        later = await gen.answer([{"role": "user", "content": QUESTIONS[1]}], GenOptions(4, 0.0, 1.0))
        return await running, later

    (first, v_first), (second, v_second) = asyncio.run(main())
    assert (v_first, v_second) == ("v1", "v2")
    assert first[0]["completion_tokens"] == 40  # not cut by the swap


def test_a_model_it_cannot_batch_is_answered_one_at_a_time(served):
    served.current.continuous = False  # as after a swap to a model whose cache is not a plain DynamicCache
    gen = make_generator(served)
    opts = GenOptions(6, 0.0, 1.0)

    async def main():
        return await asyncio.gather(*(gen.answer([{"role": "user", "content": q}], opts) for q in QUESTIONS[:2]))

    for q, (answer, _) in zip(QUESTIONS, asyncio.run(main())):
        assert answer[0]["text"] == alone(served, q, opts)["text"]
    assert gen.steps == 0


def test_a_failed_step_fails_its_answers_and_the_next_are_served(served, monkeypatch):
    gen = make_generator(served)
    real, calls = ContinuousGenerator._step, []

    def failing_once(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")
        return real(self, *args)

    monkeypatch.setattr(ContinuousGenerator, "_step", failing_once)
    opts = GenOptions(20, 0.0, 1.0)

    async def main():
        held = await asyncio.gather(*(gen.answer([{"role": "user", "content": q}], opts) for q in QUESTIONS[:3]),
                                    return_exceptions=True)
        return held, await gen.answer([{"role": "user", "content": QUESTIONS[3]}], opts)

    held, later = asyncio.run(main())
    assert all(isinstance(h, RuntimeError) for h in held), held
    assert later[0][0]["text"] == alone(served, QUESTIONS[3], opts)["text"]


def test_supports_plain_caches_only(served):
    from transformers import MistralConfig, MistralForCausalLM

    assert ContinuousGenerator.supports(served.current.run.model)
    windowed = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                sliding_window=4))
    assert not ContinuousGenerator.supports(windowed)


def test_per_row_warpers_match_transformers():
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    top_p = torch.tensor([0.3, 0.9, 1.0])
    ours = top_p_filter(logits, top_p)
    for i, p in enumerate(top_p.tolist()):
        theirs = TopPLogitsWarper(p)(None, logits[i:i + 1]) if p < 1 else logits[i:i + 1]
        assert torch.equal(ours[i:i + 1].isinf(), theirs.isinf())
    assert torch.allclose(TemperatureLogitsWarper(0.5)(None, logits), logits / 0.5)
    # greedy rows take the most likely token; a top_p that keeps one token samples only it
    picked = next_tokens(logits, torch.tensor([0.0, 0.7, 1.0]), torch.tensor([1.0, 1e-9, 1.0]),
                         torch.Generator().manual_seed(0))
    assert picked[:2].tolist() == logits[:2].argmax(-1).tolist()
    # a sampled row follows its distribution (temperature 1, no top_p): 2000 draws within 0.05
    probs = torch.tensor([[0.0, 0.2, 0.8]]).log()
    draws = torch.stack([next_tokens(probs, torch.tensor([1.0]), torch.tensor([1.0]), g)
                         for g in [torch.Generator().manual_seed(s) for s in range(2000)]])
    assert abs(float((draws == 2).float().mean()) - 0.8) < 0.05 and not (draws == 0).any()


def test_text_so_far_holds_back_half_characters(run_dir):
    class Bytes:  # decodes byte tokens the way byte-level BPE does: invalid UTF-8 becomes U+FFFD
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    text = TextSoFar(Bytes())
    pieces = [text.add(b) for b in "né ✓".encode()]
    assert "\ufffd" not in "".join(pieces) and "".join(pieces) == "né ✓"
    assert pieces[1] == "" and pieces[2] == "é"  # the first byte of é waits for the second


def test_keep_drops_rows_and_the_padding_only_they_needed():
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.arange(2 * 1 * 4 * 1, dtype=torch.float).view(2, 1, 4, 1), torch.zeros(2, 1, 4, 1), 0)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    rows = kv_rows.Rows(cache, mask, torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]]))
    left = kv_rows.keep(rows, [0])
    assert left.mask.tolist() == [[1, 1]] and left.tokens.tolist() == [[5, 6, 7]]
    assert cache.layers[0].keys.flatten().tolist() == [2.0, 3.0]
    assert left.positions().tolist() == [[2]]


def test_concurrent_streams_over_http_share_steps_and_are_all_recorded(run_dir, tmp_path):
    """Through the real service: four streamed and two plain chat requests at once; every stream
    ends with [DONE], each answer is what the request gets alone, every row is in the store."""
    import json
    import sqlite3
    import threading

    import httpx

    from tuneline.serve.app import ServeSettings, create_app

    from serve_helpers import LiveServer

    db = tmp_path / "monitor.db"
    app = create_app(ServeSettings(run_dir=str(run_dir), db_url=f"sqlite:///{db}", drift_interval=3600))
    bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": 40, "stream": i < 4}
              for i, q in enumerate(QUESTIONS + ["what is the code for rose"])]
    texts: dict[int, str] = {}

    def ask(i, url):
        with httpx.Client(base_url=url, timeout=60) as c:
            if bodies[i]["stream"]:
                with c.stream("POST", "/v1/chat/completions", json=bodies[i]) as r:
                    lines = [l for l in r.iter_lines() if l.startswith("data: ")]
                assert lines[-1] == "data: [DONE]"
                chunks = [json.loads(l[6:])["choices"][0]["delta"].get("content", "") for l in lines[:-1]]
                texts[i] = "".join(chunks)
            else:
                texts[i] = c.post("/v1/chat/completions", json=bodies[i]).json()["choices"][0]["message"]["content"]

    with LiveServer(app) as server:
        threads = [threading.Thread(target=ask, args=(i, server.url)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{server.url}/metrics").text
        alone_texts = {}
        for i, b in enumerate(bodies):
            r = httpx.post(f"{server.url}/v1/chat/completions", json={**b, "stream": False}, timeout=60)
            alone_texts[i] = r.json()["choices"][0]["message"]["content"]
    assert texts == alone_texts
    steps = {l.split("le=")[1].split("}")[0].strip('"'): float(l.split()[-1])
             for l in metrics.splitlines() if l.startswith("tuneline_decode_rows_bucket")}
    assert steps["+Inf"] > steps["1.0"]  # some decoding steps advanced several answers at once
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from requests where status = 200").fetchone()[0] == 2 * len(bodies)
