"""The generate task: chat formats, the loss mask on a real template, truncation, methods, CLI."""

import json
import subprocess
import sys

import pytest

import tuneline
from tuneline.data.chat import to_messages
from tuneline.data.io import read_rows
from tuneline.errors import UserError
from tuneline.tasks.generate import IGNORE, encode_conversation, fit_length

from conftest import write_jsonl, write_recipe

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is my order?"},
    {"role": "assistant", "content": "It ships tomorrow."},
    {"role": "user", "content": "Thanks! And returns?"},
    {"role": "assistant", "content": "Within 30 days."},
]


def test_formats_normalise_to_messages():
    want = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert to_messages({"messages": want}, "messages", "f:1") == want
    assert to_messages({"prompt": "Hi", "completion": "Hello"}, "prompt_completion", "f:1") == want
    assert to_messages({"instruction": "Hi", "input": "", "output": "Hello"}, "alpaca", "f:1") == want
    assert to_messages({"instruction": "Sum", "input": "1+1", "output": "2"}, "alpaca", "f:1")[0]["content"] == "Sum\n\n1+1"
    share = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    assert to_messages(share, "sharegpt", "f:1") == want


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}, "empty"),
    ({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}, "turn 1"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, "last turn"),
    ({"conversations": [{"from": "alien", "value": "Hi"}]}, "unknown 'from'"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message, tiny_llama):
    fmt = "sharegpt" if "conversations" in row else "messages"
    good = {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]}
    if fmt == "sharegpt":
        good = {"conversations": [{"from": "human", "value": "ok"}, {"from": "gpt", "value": "fine"}]}
    path = write_jsonl(tmp_path / "chats.jsonl", [good, good, row])
    rows = read_rows(path)
    with pytest.raises(UserError) as e:
        for i, rec in enumerate(rows.records):
            to_messages(rec, fmt, rows.where(i))
    assert "chats.jsonl:3" in str(e.value) and message in str(e.value)


@pytest.fixture(scope="session")
def smol_tokenizer():
    from tuneline.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct").path)


def test_mask_on_real_smollm2_template(smol_tokenizer):
    tok = smol_tokenizer
    ids, labels, last = encode_conversation(tok, CONV, "all_assistant")
    assert len(ids) == len(labels)
    # the whole rendered conversation is what the template renders
    assert tok.decode(ids) == tok.apply_chat_template(CONV, tokenize=False)
    trained = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE])
    assert trained == "It ships tomorrow.<|im_end|>\nWithin 30 days.<|im_end|>\n"
    # the end-of-turn token (also SmolLM2's pad token) is learned: the model must learn to stop
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end == tok.pad_token_id and im_end in [l for l in labels if l != IGNORE]
    # nothing of the prompts (system, user turns, role headers) is trained
    prompt = tok.decode([i for i, l in zip(ids, labels) if l == IGNORE])
    assert "Where is my order?" in prompt and "It ships" not in prompt and "Within 30" not in prompt
    assert tok.decode(ids[last:]) == "Within 30 days.<|im_end|>\n"
    _, last_only, _ = encode_conversation(tok, CONV, "last_assistant")
    assert tok.decode([i for i, l in zip(ids, last_only) if l != IGNORE]) == "Within 30 days.<|im_end|>\n"


def test_truncation_keeps_final_answer():
    ids = list(range(100))
    labels = [IGNORE] * 90 + list(range(90, 100))
    cut_ids, cut_labels = fit_length(ids, labels, 90, 32)
    assert len(cut_ids) == 32 and cut_ids[-10:] == list(range(90, 100)) and cut_labels[-10:] == list(range(90, 100))
    # an answer longer than the limit keeps some context and the answer's beginning
    labels2 = [IGNORE] * 10 + list(range(10, 100))
    c2, l2 = fit_length(ids, labels2, 10, 32)
    assert len(c2) == 32 and c2[0] == 2 and l2[8] == 10
    # middle: the start (system prompt, the instruction at the head of a long turn) and the answer stay
    mid_ids, mid_labels = fit_length(ids, labels, 90, 32, keep_head=8)
    assert mid_ids == list(range(8)) + list(range(76, 100)) and mid_labels[-10:] == list(range(90, 100))
    assert fit_length(ids, labels, 90, 32, keep_head=30)[0][:14] == list(range(14))  # 8 tokens of context kept


CHATS = [
    {"messages": [{"role": "user", "content": f"what is the code for {w}"},
                  {"role": "assistant", "content": f"the code for {w} is {c}"}]}
    for w, c in [("apple", "red"), ("banana", "yellow"), ("grass", "green"), ("sky", "blue"), ("coal", "black"),
                 ("snow", "white"), ("plum", "purple"), ("orange", "orange"), ("lemon", "yellow"), ("rose", "red")] * 3
]


@pytest.fixture
def gen_recipe(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "train.jsonl", CHATS[:24])
    write_jsonl(tmp_path / "test.jsonl", CHATS[24:])

    def make(method="lora", **train):
        t = {"epochs": 2, "lr": 5e-3, "batch_size": 4, "max_length": 64, "log_every": 2}
        t.update(train)
        return write_recipe(tmp_path / f"gen-{method}.yaml", task="generate", model=str(tiny_llama), method=method,
                            data={"train": "train.jsonl", "test": "test.jsonl"}, train=t,
                            generate={"max_new_tokens": 8}, output=str(tmp_path / f"gen-{method}"))

    return make


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "dora", "ia3", "prompt"])
def test_generate_methods_train_and_evaluate(method, gen_recipe):
    result = tuneline.train(gen_recipe(method))
    ev = result.eval
    assert ev["task"] == "generate"
    keys = {"loss", "perplexity", "exact_match", "bleu", "chrf", "rougeL", "samples"}
    assert keys <= set(ev["tuned"]) and keys <= set(ev["baseline"])
    assert ev["baseline"]["kind"] == "base_model"
    assert len(ev["tuned"]["samples"]) == 5 and {"prompt", "reference", "tuned", "baseline"} <= set(ev["tuned"]["samples"][0])
    if method == "full":
        assert ev["tuned"]["loss"] < ev["baseline"]["loss"]
        # open answers (6 words): the verdict rests on loss, ROUGE-L and chrF per answer, not corpus chrF alone
        assert ev["verdict_metrics"] == ["loss", "rougeL", "chrf_per_answer"]
        page = (result.path / "report.html").read_text()
        assert "verdict metrics: <b>loss</b>" in page
    run = tuneline.load_run(result.path)
    out = run.predict(["what is the code for snow"])
    assert isinstance(out[0]["text"], str)
    assert isinstance(run.generate([{"role": "user", "content": "what is the code for sky"}]), str)


def test_generate_lora_targets_llama(gen_recipe):
    result = tuneline.train(gen_recipe("lora", epochs=1))
    cfg = json.loads((result.path / "adapter" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_too_long_rows_cut_or_dropped_and_reported(gen_recipe, capsys):
    # every row is longer than 16 tokens: dropping them all is an error that says what to do
    with pytest.raises(UserError, match="max_length"):
        tuneline.train(gen_recipe("lora", epochs=1, max_length=16), overrides=["generate.truncation=drop"])
    result = tuneline.train(gen_recipe("lora", epochs=1, max_length=16), overrides=["generate.truncation=left"],
                            overwrite=True)
    out = capsys.readouterr().out
    assert "train: 21 rows longer than train.max_length=16 were cut from the left" in out
    assert result.eval["n"] == 6
    tuneline.train(gen_recipe("lora", epochs=1, max_length=16), overwrite=True)  # the default: middle
    assert "were cut in the middle (their start and answer kept)" in capsys.readouterr().out


def test_chat_cli(gen_recipe):
    result = tuneline.train(gen_recipe("full", epochs=1))
    proc = subprocess.run([sys.executable, "-m", "tuneline.cli", "chat", str(result.path), "--max-new-tokens", "4"],
                          input="what is the code for sky\n/reset\n/help\n/hepl\nhello\n/exit\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("bot>") == 2 and "(history cleared)" in proc.stdout
    # commands are never sent to the model
    assert proc.stdout.count("/help shows this") == 3 and "(unknown command /hepl)" in proc.stdout


def test_gguf_file_and_alias_share_one_conversion(smol_tokenizer):
    from tuneline.models import CATALOG, _module_dir, resolve_model

    entry = CATALOG["smollm2-135m-instruct"]
    by_alias = resolve_model("smollm2-135m-instruct")
    by_file = resolve_model(str(_module_dir(entry) / entry.gguf))
    assert by_alias.path == by_file.path and by_file.kind == "gguf"
    from safetensors import safe_open

    with safe_open(str(__import__("pathlib").Path(by_alias.path) / "model.safetensors"), "pt") as f:
        assert any("layers.29" in k for k in f.keys())  # all 30 blocks, dequantized
    assert smol_tokenizer.chat_template and smol_tokenizer.pad_token == "<|im_end|>"


def test_any_table_as_prompt_and_answer_columns(tmp_path, tiny_llama):
    rows = [{"review": f"text {i}", "stars": i % 5} for i in range(30)]
    write_jsonl(tmp_path / "t.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", task="generate", model=str(tiny_llama), method="lora",
                          data={"train": "t.jsonl", "text_column": "review", "label_column": "stars"},
                          train={"max_steps": 2, "batch_size": 4}, generate={"max_new_tokens": 3},
                          output=str(tmp_path / "run"))
    result = tuneline.train(recipe)
    assert result.eval["tuned"]["samples"][0]["reference"] in {"0", "1", "2", "3", "4"}
    bad = write_recipe(tmp_path / "bad.yaml", task="generate", model=str(tiny_llama),
                       data={"train": "t.jsonl", "text_column": "review", "label_column": "nope"})
    with pytest.raises(UserError, match="'nope'"):
        tuneline.train(bad)


@pytest.mark.parametrize("method", ["full", "lora", "dora", "ia3"])
def test_head_only_where_labelled_equals_full_loss(method, tiny_llama, tmp_path):
    """The loss computed from the decoder + output layer at labelled positions only equals
    Transformers' own loss over full logits (the mean over the same tokens)."""
    import torch

    from tuneline.training.methods import apply_method
    from tuneline.recipe import recipe_from_dict
    from tuneline.tasks.generate import GenerateTask, _body_and_head

    recipe = recipe_from_dict({"task": "generate", "model": str(tiny_llama), "method": method,
                               "data": {"train": "x.jsonl"}})
    task = GenerateTask()
    from tuneline.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    torch.manual_seed(0)
    model = apply_method(task.load_model(str(tiny_llama), recipe, tok), recipe, task)
    if method in ("lora", "dora"):  # make the adapters non-trivial
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    model.eval()
    assert _body_and_head(model) is not None
    ids = torch.randint(5, 1000, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[2, 9:] = -100
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    ours = task.loss(model, batch)
    theirs = model(**batch).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    ours.backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_neftune_noise_only_while_training(tiny_llama, gen_recipe):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneline.training.neftune import enable_neftune

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    ids = torch.randint(5, 1000, (2, 10))
    clean = model.get_input_embeddings()(ids)
    enable_neftune(model, 5.0)
    model.train()
    noisy = model.get_input_embeddings()(ids)
    bound = 5.0 / (10 * clean.size(-1)) ** 0.5
    diff = (noisy - clean).abs()
    assert 0 < diff.max().item() <= bound + 1e-6
    model.eval()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
    # and a run with it trains and evaluates
    result = tuneline.train(gen_recipe("lora", neftune_alpha=5.0))
    assert result.eval["tuned"]["loss"] is not None


def test_loop_breakers_reach_generation(tiny_llama):
    """repetition_penalty and no_repeat_ngram_size change what greedy decoding writes."""
    from transformers import AutoModelForCausalLM

    from tuneline.models import load_tokenizer
    from tuneline.recipe import GenerateOptions
    from tuneline.tasks import get_task

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    tok = load_tokenizer(str(tiny_llama), False)
    task = get_task("generate")
    outputs = []
    real_generate = model.generate

    def spy(**kwargs):
        out = real_generate(**kwargs)
        outputs.append(out[:, kwargs["input_ids"].shape[1]:].tolist())
        return out

    model.generate = spy
    conv = [[{"role": "user", "content": "where is my parcel"}], [{"role": "user", "content": "refund please"}]]
    task.generate(model, tok, conv, GenerateOptions(max_new_tokens=24))
    task.generate(model, tok, conv, GenerateOptions(max_new_tokens=24, no_repeat_ngram_size=1))
    task.generate(model, tok, conv, GenerateOptions(max_new_tokens=24, repetition_penalty=5.0))
    ends = {tok.eos_token_id, tok.pad_token_id}

    def answers(rows):  # each row's tokens up to its end (what follows is padding)
        return [ids[:next((i for i, t in enumerate(ids) if t in ends), len(ids))] for ids in rows]

    plain, no_repeat, penalised = (answers(rows) for rows in outputs)
    assert any(len(set(ids)) < len(ids) for ids in plain)  # a random model loops when greedy
    assert all(len(set(ids)) == len(ids) for ids in no_repeat)
    assert penalised != plain


def test_an_encoder_for_a_chat_task_is_refused_before_the_data_is_read(gen_recipe, tiny_bert, capsys):
    from tuneline.errors import UserError

    with pytest.raises(UserError, match="is an encoder .* needs a decoder"):
        tuneline.train(gen_recipe("lora"), overrides=[f"model={tiny_bert}"])
    assert "Data audit" not in capsys.readouterr().out  # seconds, not after the audit


def test_verdict_metrics_follow_the_answers_or_the_recipe():
    from types import SimpleNamespace

    from tuneline.recipe import recipe_from_dict
    from tuneline.tasks import get_task

    chat = get_task("generate")
    base = {"task": "generate", "model": "x", "data": {"train": "t.jsonl"}}
    recipe = recipe_from_dict(base)
    labels = SimpleNamespace(references=["positive", "negative", "very positive"])
    assert chat.verdict_metrics(recipe, labels) == ["exact_match"]  # short label-like answers
    prose = SimpleNamespace(references=["the code for snow is white and cold"])
    assert chat.verdict_metrics(recipe, prose) == ["loss", "rougeL", "chrf_per_answer"]
    named = recipe_from_dict({**base, "eval": {"headline": "chrf"}})
    assert chat.verdict_metrics(named, prose) == ["chrf"]


def test_a_headline_metric_of_another_task_is_a_clear_error(gen_recipe):
    from tuneline.errors import UserError

    with pytest.raises(UserError, match="eval.headline: 'accuracy' is not a generate test metric; allowed: loss"):
        tuneline.train(gen_recipe("lora"), overrides=["eval.headline=accuracy"])
