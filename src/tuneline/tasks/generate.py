"""Task `generate`: chat / instruction tuning of a causal language model.

Rows become token ids with the model's own chat template (or a plain documented one);
only assistant tokens count in the loss. Evaluation: loss and perplexity on assistant
tokens, and exact match / BLEU / chrF / ROUGE-L of generated answers, against the untuned
base model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from ..data.batching import pad_batch, packed_batch, sorted_batches
from ..data.chat import (IGNORE, detect_format, encode_conversation, ensure_chat_template, render_chat, to_messages,
                         with_system)
from ..data.io import Rows
from ..data.streaming import StreamedRows
from ..data.token_cache import TOKENS, ChunkEncoder, TokenColumn, WhereColumn, row_lengths
from ..errors import UserError
from ..evaluation.text_metrics import text_metrics
from ..recipe import eval_batch_size
from . import register_task
from .chunked_ce import answer_cross_entropy
from .base import Task

GREEDY_BELOW = 1e-5  # temperatures under this decode greedily (as vLLM does)
TRUNCATED, DROPPED = 1, 2  # row status bits (a truncated row can still be dropped: no answer left)


@dataclass
class ChatEncoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    where: list[str]
    prompts: list[list[dict]]       # the conversation up to the last answer (for generation)
    references: list[str]           # the last assistant answer
    truncated: int = 0
    dropped: int = 0
    dropped_where: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # the raw rows kept, for evaluation slices

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> "list[int] | np.ndarray":
        return row_lengths(self.input_ids)  # a numpy array when the rows live in the token cache

    def head(self, n: int) -> "ChatEncoded":
        return ChatEncoded(self.input_ids[:n], self.labels[:n], self.where[:n], self.prompts[:n],
                           self.references[:n], self.truncated, self.dropped, self.dropped_where,
                           self.records[:n])

    def with_rows(self, input_ids: list[list[int]], labels: list[list[int]], where: list[str]) -> "ChatEncoded":
        """These rows appended for training (train.replay); they have no prompt or reference."""
        # prompts/references exist only for in-memory rows (a streamed train keeps none)
        kept = len(self.prompts) == len(self)
        return ChatEncoded(self.input_ids + input_ids, self.labels + labels, self.where + where,
                           self.prompts + [[] for _ in input_ids] if kept else [],
                           self.references + [""] * len(input_ids) if kept else [],
                           self.truncated, self.dropped, self.dropped_where)


@dataclass
class Prepared:
    labels: None
    train: ChatEncoded
    validation: ChatEncoded
    test: ChatEncoded


def fit_length(ids, labels, last_start, max_length: int, keep_head: int = 0):
    """Cut the history so the final answer stays whole: from the left, or (keep_head > 0) in the
    middle, keeping the first keep_head tokens: the system prompt and the head of the first turn,
    where an instruction usually stands in front of its long context. If the answer alone is too
    long, keep a little context and the answer's beginning."""
    if len(ids) <= max_length:
        return ids, labels
    answer_len = len(ids) - last_start
    if answer_len <= max_length - 8:
        head = min(keep_head, last_start, max_length - 8 - answer_len)  # 8+ tokens of context before the answer
        tail = max_length - head
        return ids[:head] + ids[-tail:], labels[:head] + labels[-tail:]
    keep_ctx = min(last_start, max_length // 4)
    start = last_start - keep_ctx
    return ids[start:start + max_length], labels[start:start + max_length]


def encode_row(tokenizer, msgs: list[dict], options, max_length: int) -> tuple[list[int], list[int], int]:
    """One conversation -> (ids, labels, status bits): too long rows are cut (truncation: middle or
    left) or dropped (drop); a row with no answer token left is dropped. Dropped rows have no ids."""
    ids, labs, last_start = encode_conversation(tokenizer, msgs, options.loss_on)
    status = 0
    if len(ids) > max_length:
        if options.truncation == "drop":
            return [], [], DROPPED
        keep_head = max_length // 4 if options.truncation == "middle" else 0
        ids, labs = fit_length(ids, labs, last_start, max_length, keep_head)
        status = TRUNCATED
    if all(l == IGNORE for l in labs):
        return [], [], status | DROPPED
    return ids, labs, status


def collate_chat(data: ChatEncoded, idx: list[int], pad_id: int) -> dict:
    """Rows of a chat split, right-padded; labels IGNORE outside the answers."""
    ids, mask = pad_batch([data.input_ids[i] for i in idx], pad_id)
    labels, _ = pad_batch([data.labels[i] for i in idx], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# Architectures whose causal-LM forward is exactly lm_head(decoder(x)) (no logit scaling or capping).
PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def _body_and_head(model):
    """(decoder, output layer) of a plain causal LM, through PEFT wrappers that inject in place;
    None where the model's own forward must run (prompt tuning, other architectures)."""
    base = model
    if hasattr(model, "peft_config"):
        cfg = next(iter(model.peft_config.values()))
        if getattr(cfg, "is_prompt_learning", False):
            return None
        base = model.get_base_model()
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    try:
        return base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


@register_task
class GenerateTask(Task):
    name = "generate"
    options_section = "generate"
    model_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    pipeline_tag = "text-generation"
    causal_lm = True
    data_shape = "chat"
    default_metric = "loss"
    metric_names = ("loss", "perplexity")
    headline_metrics = ("loss", "perplexity", "exact_match", "bleu", "chrf", "chrf_per_answer", "rougeL",
                        "length_ratio")
    key_metric = "chrf"
    serves = ("chat",)
    export_formats = ("hf", "gguf")
    report_sections = ("samples",)

    # -- data -------------------------------------------------------------
    def conversations(self, rows: Rows, recipe) -> list[list[dict]]:
        to_conversation = self._converter(rows, recipe)
        return [to_conversation(rec, rows.where(i)) for i, rec in enumerate(rows.records)]

    def _converter(self, rows: Rows, recipe):
        """record, where -> messages; the format is detected from `rows` (all, or the first ones)."""
        # data.text_column / data.label_column name the prompt and answer columns of any table
        d = recipe.data
        fmt = d.format if d.format != "auto" else detect_format(rows, d.text_column, d.label_column)
        cols = (d.text_column or "prompt", d.label_column or "completion")
        return lambda rec, where: with_system(to_messages(rec, fmt, where, columns=cols), recipe.generate.system_prompt)

    def encode_rows(self, rows: Rows, recipe, tokenizer, labels=None) -> ChatEncoded:
        ensure_chat_template(tokenizer)
        max_len = recipe.train.max_length
        out = ChatEncoded([], [], [], [], [])
        for i, msgs in enumerate(self.conversations(rows, recipe)):
            ids, labs, status = encode_row(tokenizer, msgs, recipe.generate, max_len)
            out.truncated += bool(status & TRUNCATED)
            if status & DROPPED:
                out.dropped += 1
                out.dropped_where.append(rows.where(i))
                continue
            out.input_ids.append(ids)
            out.labels.append(labs)
            out.where.append(rows.where(i))
            out.prompts.append(msgs[:-1])
            out.references.append(msgs[-1]["content"])
            out.records.append(rows.records[i])
        if not out.input_ids:
            raise UserError(f"{rows.path}: no row fits train.max_length={max_len}; raise it or use "
                            "generate.truncation: middle")
        return out

    def prepare(self, splits, recipe, tokenizer) -> Prepared:
        train = (self.encode_streamed(splits.train, recipe) if isinstance(splits.train, StreamedRows)
                 else self.encode_rows(splits.train, recipe, tokenizer))
        p = Prepared(None, train, *(self.encode_rows(getattr(splits, s), recipe, tokenizer)
                                    for s in ("validation", "test")))
        for name in ("train", "validation", "test"):
            e = getattr(p, name)
            if e.truncated or e.dropped:
                how = {"left": "cut from the left", "middle": "cut in the middle (their start and answer kept)",
                       "drop": "dropped"}[recipe.generate.truncation]
                n = e.truncated + e.dropped
                print(f"{name}: {n} {'row' if n == 1 else 'rows'} longer than train.max_length="
                      f"{recipe.train.max_length} were {how}"
                      + (f" (e.g. {e.dropped_where[0]})" if e.dropped_where else ""), flush=True)
        return p

    # -- data larger than memory (data/streaming.py) ------------------------
    def stream_encoder(self, head: Rows, recipe, tokenizer) -> ChunkEncoder:
        """Encodes chunks of (line, record) into the token cache; the format is detected on the first rows."""
        ensure_chat_template(tokenizer)
        to_conversation = self._converter(head, recipe)
        max_len, path = recipe.train.max_length, head.path

        def encode(chunk: list[tuple[int, dict]]) -> dict:
            rows = [encode_row(tokenizer, to_conversation(rec, f"{path}:{line}"), recipe.generate, max_len)
                    for line, rec in chunk]
            return {"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows], "status": [r[2] for r in rows]}

        return ChunkEncoder(pa.schema([("input_ids", TOKENS), ("labels", TOKENS), ("status", pa.int8())]), encode)

    def encode_streamed(self, rows: StreamedRows, recipe) -> ChatEncoded:
        """The training split read from the token cache (prompts and references are kept only for
        the evaluation splits, which are read into memory)."""
        status = rows.file.numpy("status")[rows.positions]
        dropped = (status & DROPPED) != 0
        kept = rows.positions[~dropped]
        if not len(kept):
            raise UserError(f"{rows.path}: no row fits train.max_length={recipe.train.max_length}; raise it or use "
                            "generate.truncation: middle")
        lines = rows.file.lines
        return ChatEncoded(TokenColumn(rows.file.tokens("input_ids"), kept), TokenColumn(rows.file.tokens("labels"), kept),
                           WhereColumn(rows.path, lines[kept]), [], [], truncated=int(((status & TRUNCATED) != 0).sum()),
                           dropped=int(dropped.sum()),
                           dropped_where=[f"{rows.path}:{n}" for n in lines[rows.positions[dropped][:10]]])

    def encoding_options(self, recipe) -> dict:
        g = recipe.generate
        return {"loss_on": g.loss_on, "truncation": g.truncation, "system_prompt": g.system_prompt}

    def encode_general(self, rows: Rows, recipe, tokenizer) -> ChatEncoded:
        """Without generate.system_prompt: general rows stand for the model's general use."""
        general = recipe.model_copy(update={"generate": recipe.generate.model_copy(update={"system_prompt": None})})
        return self.encode_rows(rows, general, tokenizer)

    # -- model ------------------------------------------------------------
    def load_model(self, path: str, recipe, tokenizer, labels=None, dtype=torch.float32):
        from transformers import AutoModelForCausalLM

        from ..models import load_config

        config = load_config(path, recipe.trust_remote_code, recipe.train.dropout)
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id
        try:
            return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                        trust_remote_code=recipe.trust_remote_code)
        except ValueError as e:
            raise UserError(f"model: {path!r} is not a causal language model: {e}") from None

    def load_trained(self, folder: str, trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code)

    # -- batches ----------------------------------------------------------
    def collate(self, data: ChatEncoded, idx: list[int], pad_id: int) -> dict:
        return collate_chat(data, idx, pad_id)

    def packs(self, model) -> bool:
        """Rows can be packed end to end for this model: the architectures whose forward keeps
        attention inside each packed row from restarting position ids (transformers' masks)."""
        return _body_and_head(model) is not None

    def collate_packed(self, data: ChatEncoded, bins: list[list[int]], pad_id: int) -> dict:
        return packed_batch(data.input_ids, data.labels, bins, pad_id, IGNORE)

    def loss_items(self, batch: dict) -> int:
        """How many terms the mean loss of `batch` averages: its answer tokens (after the shift)."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model, batch: dict) -> torch.Tensor:
        parts = _body_and_head(model)
        if parts is None:
            return model(**batch).loss
        body, head = parts
        # The output layer only where the loss counts: full-vocabulary logits for every
        # position (prompts included) are most of the activation memory of a small model.
        # Packed rows come with position ids and no mask; no cache, which would hide the packing.
        where = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        hidden = body(input_ids=batch["input_ids"], use_cache=False, **where).last_hidden_state
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        return answer_cross_entropy(head, hidden[:, :-1][keep], labels[keep])

    # -- evaluation -------------------------------------------------------
    @torch.no_grad()
    def token_loss(self, model, data: ChatEncoded, pad_id: int, batch_size: int, device) -> float:
        """Mean cross-entropy per assistant token (the same tokens the training loss counts)."""
        was = model.training
        model.eval()
        total, count = 0.0, 0
        for idx in sorted_batches(data.lengths, batch_size):
            b = {k: v.to(device) for k, v in collate_chat(data, idx, pad_id).items()}
            shift_labels = b["labels"][:, 1:]
            keep = shift_labels != IGNORE
            parts = _body_and_head(model)
            n = int(keep.sum())
            if parts is not None and n:  # logits only where the loss counts (see loss()), a chunk at a time
                hidden = parts[0](input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                  use_cache=False).last_hidden_state  # a cache would keep every layer's keys
                total += float(answer_cross_entropy(parts[1], hidden[:, :-1][keep], shift_labels[keep])) * n
            elif n:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
                logits = logits[:, -b["input_ids"].shape[1]:]  # prompt tuning prepends virtual tokens
                logits = logits[:, :-1][keep].float()
                total += float(torch.nn.functional.cross_entropy(logits, shift_labels[keep], reduction="sum"))
            count += n
        model.train(was)
        return total / max(count, 1)

    def evaluate(self, model, data: ChatEncoded, labels, pad_id: int, batch_size: int, device) -> dict:
        loss = self.token_loss(model, data, pad_id, batch_size, device)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50))}

    @torch.no_grad()
    def generate(self, model, tokenizer, conversations: list[list[dict]], options, batch_size: int = 8,
                 max_length: int | None = None, **generate_kwargs) -> list[str]:
        """Answers for conversations that end with a user turn: batched, left-padded, KV-cached.
        generate_kwargs go to `model.generate` (the service passes a streamer, stop strings)."""
        device = next(model.parameters()).device
        prompts = [self.prompt_ids(tokenizer, c, max_length) for c in conversations]
        was = model.training
        model.eval()
        out: list[str | None] = [None] * len(prompts)
        eos = self.stop_ids(model, tokenizer)
        # A temperature near 0 is greedy: logits divided by 1e-50 overflow to inf and sampling fails.
        sample = options.temperature >= GREEDY_BELOW
        for idx in sorted_batches([len(p) for p in prompts], batch_size):
            ids, mask = pad_batch([prompts[i] for i in idx], tokenizer.pad_token_id, side="left")
            kwargs = dict(max_new_tokens=options.max_new_tokens, do_sample=sample, eos_token_id=sorted(eos),
                          pad_token_id=tokenizer.pad_token_id)
            if sample:
                kwargs.update(temperature=options.temperature, top_p=options.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            # Loop breakers; off by default: on Dolly they cut ROUGE-L and chrF (benchmarks/README.md).
            if options.repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = options.repetition_penalty
            if options.no_repeat_ngram_size:
                kwargs["no_repeat_ngram_size"] = options.no_repeat_ngram_size
            kwargs.update(generate_kwargs)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            for row, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[row, ids.shape[1]:], skip_special_tokens=True).strip()
        model.train(was)
        return out

    def prompt_ids(self, tokenizer, conversation: list[dict], max_length: int | None = None) -> list[int]:
        """The tokens a model answering `conversation` starts from: the chat template with the
        assistant's turn opened, keeping the last `max_length` tokens."""
        ensure_chat_template(tokenizer)
        ids = tokenizer(render_chat(tokenizer, conversation, gen=True), add_special_tokens=False)["input_ids"]
        return ids[-max_length:] if max_length else ids

    def stop_ids(self, model, tokenizer) -> set[int]:
        """Tokens that end an answer: the tokenizer's end of text and the model's generation_config ones."""
        eos = {tokenizer.eos_token_id}
        gen_cfg = getattr(model, "generation_config", None)
        if gen_cfg is not None and gen_cfg.eos_token_id is not None:
            eos |= set(gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id])
        eos.discard(None)
        return eos

    def _score(self, model, tokenizer, data: ChatEncoded, recipe, device, n_gen: int) -> tuple[dict, list[str]]:
        bs = eval_batch_size(recipe)
        m = self.evaluate(model, data, None, tokenizer.pad_token_id, bs, device)
        preds = self.generate(model, tokenizer, data.prompts[:n_gen], recipe.generate, batch_size=bs,
                              max_length=recipe.train.max_length)
        m.update(text_metrics(preds, data.references[:n_gen]))
        m["generated"] = n_gen
        return m, preds

    def evaluate_test(self, model, tokenizer, data: ChatEncoded, recipe, info: dict, device) -> dict:
        # On a CPU the base model's pass costs as much as the tuned one's: both score the same
        # first eval.max_samples rows (default 200), loss and generations alike.
        n_gen = min(len(data), self.max_eval_rows(recipe))
        data = data.head(n_gen)
        tuned, tuned_preds = self._score(model, tokenizer, data, recipe, device, n_gen)
        base_model = self.load_model(info["base_model_path"], recipe, tokenizer).to(device)
        baseline, base_preds = self._score(base_model, tokenizer, data, recipe, device, n_gen)
        baseline["kind"] = "base_model"
        del base_model
        samples = [{"prompt": data.prompts[i][-1]["content"], "reference": data.references[i],
                    "tuned": tuned_preds[i], "baseline": base_preds[i]} for i in range(min(5, n_gen))]
        tuned["samples"] = samples
        baseline["samples"] = samples
        predictions = [{"where": data.where[i], "prompt": data.prompts[i][-1]["content"],
                        "reference": data.references[i], "tuned": tuned_preds[i], "baseline": base_preds[i]}
                       for i in range(n_gen)]
        return {"tuned": tuned, "baseline": baseline, "predictions": predictions}

    def predict(self, model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8,
                options=None, system_prompt: str | None = None) -> list[dict]:
        convs = [with_system([{"role": "user", "content": t}], system_prompt) for t in texts]
        answers = self.generate(model, tokenizer, convs, options, batch_size, max_length)
        return [{"text": a} for a in answers]

    # -- evaluation extras (eval.json) ----------------------------------------
    def evaluation_extras(self, result: dict, preds: list[dict], data: ChatEncoded, model, tokenizer, recipe,
                          info: dict, device, base_dir) -> None:
        """Slices by chrF, and counterfactual flips only when eval.counterfactuals is set: every
        swapped conversation is generated again."""
        from ..evaluation.slices import slice_metrics

        refs = [p["reference"] for p in preds]
        tuned = [p["tuned"] for p in preds]

        def score(idx):
            return text_metrics([tuned[i] for i in idx], [refs[i] for i in idx])

        records = data.records[:len(preds)]
        result["slices"] = [slice_metrics(c, records, score, "chrf") for c in recipe.eval.slices]
        if recipe.eval.counterfactuals:
            result["counterfactuals"] = self._counterfactuals(preds, data, model, tokenizer, recipe, base_dir)

    def _counterfactuals(self, preds: list[dict], data: ChatEncoded, model, tokenizer, recipe, base_dir) -> dict:
        from ..evaluation.counterfactual import Swapper, load_pairs, summarise
        from ..evaluation.text_metrics import normalise

        pairs, name = load_pairs(recipe.eval.counterfactuals, base_dir)
        sw = Swapper(pairs)
        hits = []
        for i in range(len(preds)):
            conv = data.prompts[i]
            swapped = [dict(m, content=sw.swap(m["content"]) or m["content"]) if m["role"] != "assistant" else m
                       for m in conv]
            if any(a["content"] != b["content"] for a, b in zip(conv, swapped)):
                hits.append((i, swapped))
            if len(hits) >= recipe.eval.counterfactual_samples:
                break
        after = self.generate(model, tokenizer, [c for _, c in hits], recipe.generate,
                              batch_size=eval_batch_size(recipe), max_length=recipe.train.max_length) if hits else []
        before = [preds[i]["tuned"] for i, _ in hits]
        return summarise(
            [preds[i]["prompt"] for i, _ in hits], [c[-1]["content"] for _, c in hits], before, after,
            [preds[i]["where"] for i, _ in hits], [normalise(b) != normalise(a) for b, a in zip(before, after)], name)

    # -- model cards ------------------------------------------------------------
    def intended_use(self, info: dict) -> str:
        return ("Answers conversations in the style of its training chats. It can state wrong facts "
                "fluently: keep a human in the loop where answers matter.")

    def card_summary(self, info: dict) -> str:
        import json

        system = (info.get("generate") or {}).get("system_prompt")
        return "chat answers" + (f" under the system prompt {json.dumps(system)}" if system else "")

    # -- data audit -------------------------------------------------------------
    def audit_options(self, recipe) -> dict:
        return {"system_prompt": recipe.generate.system_prompt, "truncation": recipe.generate.truncation}

    # -- service: drift and retraining ---------------------------------------------
    def input_texts(self, rows: Rows, recipe) -> tuple[list[str], None]:
        convs = self.conversations(rows, recipe)
        return [next(m["content"] for m in reversed(c[:-1]) if m["role"] == "user") for c in convs], None

    def plain_rows(self, rows: Rows, recipe) -> list[dict]:
        return [{"messages": m} for m in self.conversations(rows, recipe)]

    def plain_data_keys(self) -> dict:
        return {"text_column": None, "label_column": None, "format": "messages"}

    def plain_input(self, record: dict) -> str:
        import json

        return json.dumps(record["messages"][:-1])

    def correction(self, feedback: dict) -> str | None:
        return feedback["corrected_answer"]

    def feedback_record(self, conversation: list[dict], fix: str) -> dict:
        return {"messages": conversation + [{"role": "assistant", "content": fix}]}

    def examples(self, rows: Rows, recipe) -> list:
        """Each chat's last answer, preferred."""
        from ..data.preference import Example

        return [Example(c[:-1], c[-1]["content"]) for c in self.conversations(rows, recipe)
                if len(c) > 1 and c[-1]["role"] == "assistant" and c[-1]["content"].strip()]

    def row_scores(self, run, rows: list[dict]) -> list[float]:
        """Sentence chrF / 100 of the generated answer against the row's."""
        import sacrebleu

        answers = run.generate([r["messages"][:-1] for r in rows])
        return [sacrebleu.sentence_chrf(a, [r["messages"][-1]["content"]]).score / 100 for a, r in zip(answers, rows)]

    def verdict_metrics(self, recipe, data) -> list[str]:
        """Short, label-like references (3 words or fewer on average) are judged by exact match; open
        answers by loss, ROUGE-L and chrF per answer together. Corpus chrF alone favours long answers
        (long references weigh most), so a model tuned to terse references could lose it while winning
        every other figure (Dolly, benchmarks/README.md); it stays in the table."""
        if recipe.eval.headline:
            return list(recipe.eval.headline)
        refs = data.references[: self.max_eval_rows(recipe)]
        words = sum(len(r.split()) for r in refs) / max(len(refs), 1)
        return ["exact_match"] if words <= 3 else ["loss", "rougeL", "chrf_per_answer"]

    def max_eval_rows(self, recipe) -> int:
        return recipe.eval.max_samples or 200
