"""Objective `kto` of task `generate`: learning from answers judged good or bad, one at a time.

KTO (Ethayarajh et al. 2024) needs no pairs: thumbs up and down on single answers are enough,
which is what a service collects. Each row's log-ratio to the reference (the untuned model) is
pushed above a KL baseline for desirable answers and below it for undesirable ones. The
baseline z is estimated as in the paper and TRL: the policy-to-reference log-ratio of mismatched
prompt / answer pairs (row i's prompt with row i+1's answer; fixed per row, so their reference
log-probs can be computed once like the rows' own), averaged over the batch, clamped at 0 and
not differentiated.

Evaluation: `logp_margin` (mean per-token log-prob of the desirable answers minus that of the
undesirable ones: higher = the model prefers what people liked) and, where a test prompt has
both a liked and a disliked answer, `preference_accuracy` over those pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.batching import pad_batch
from ..data.chat import IGNORE, ensure_chat_template
from ..data.io import Rows
from ..errors import UserError
from . import register_objective
from .generate import DROPPED, TRUNCATED, GenerateTask, encode_row
from .logprobs import sequence_logps, split_logps
from .objective import ObjectiveParts, ReferenceParts
from .preference import PreferenceTask


@dataclass
class JudgedEncoded:
    """Per row: the judged sequence, its KL partner (this prompt, the next row's answer), the label."""
    ids: list[list[int]]
    labels: list[list[int]]
    kl_ids: list[list[int]]
    kl_labels: list[list[int]]
    desirable: list[bool]
    where: list[str]
    prompts: list[list[dict]]
    references: list[str]   # the judged answers
    records: list[dict] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    dropped_where: list[str] = field(default_factory=list)
    reference: torch.Tensor | None = None  # [rows, 2]: the reference's sums (row, KL partner)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([2 * max(len(a), len(b)) for a, b in zip(self.ids, self.kl_ids)], dtype=np.int64)

    def head(self, n: int) -> JudgedEncoded:
        ref = self.reference[:n] if self.reference is not None else None
        return JudgedEncoded(self.ids[:n], self.labels[:n], self.kl_ids[:n], self.kl_labels[:n], self.desirable[:n],
                             self.where[:n], self.prompts[:n], self.references[:n], self.records[:n], self.truncated,
                             self.dropped, self.dropped_where, ref)

    def answer_counts(self) -> torch.Tensor:
        return torch.tensor([sum(1 for t in lab[1:] if t != IGNORE) for lab in self.labels], dtype=torch.float32)


@dataclass
class Prepared:
    labels: None
    train: JudgedEncoded
    validation: JudgedEncoded
    test: JudgedEncoded


def kto_loss(logratio, kl_logratio, desirable, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per row. z = max(0, mean(kl_logratio)), not differentiated; desirable rows:
    w_D·(1 - σ(β(logratio - z))), undesirable: w_U·(1 - σ(β(z - logratio)))."""
    z = kl_logratio.detach().mean().clamp(min=0)
    good = desirable_weight * (1 - torch.sigmoid(beta * (logratio - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratio)))
    return torch.where(desirable, good, bad)


@register_objective
class KTOTask(ObjectiveParts, ReferenceParts, GenerateTask):
    objective = "kto"
    data_shape = "judgements"
    metric_names = ("loss", "logp_margin")
    headline_metrics = ("logp_margin", "preference_accuracy", "loss", "perplexity", "exact_match", "chrf",
                        "chrf_per_answer", "rougeL", "length_ratio")
    key_metric = "logp_margin"

    _answers = PreferenceTask._answers  # perplexity and generated answers, scored against the liked ones

    # -- data -------------------------------------------------------------------
    def _judgements(self, rows: Rows, recipe):
        from ..data.preference import to_judgement

        return [to_judgement(rec, rows.where(i), recipe.generate.system_prompt) for i, rec in enumerate(rows.records)]

    def encode_rows(self, rows: Rows, recipe, tokenizer, labels=None) -> JudgedEncoded:
        ensure_chat_template(tokenizer)
        self.objective_options(recipe)
        judged = self._judgements(rows, recipe)
        options = recipe.generate.model_copy(update={"loss_on": "last_assistant"})
        out = JudgedEncoded(*([] for _ in range(9)))
        for i, j in enumerate(judged):
            partner = judged[(i + 1) % len(judged)].completion
            own = encode_row(tokenizer, j.prompt + [{"role": "assistant", "content": j.completion}], options,
                             recipe.train.max_length)
            kl = encode_row(tokenizer, j.prompt + [{"role": "assistant", "content": partner}], options,
                            recipe.train.max_length)
            out.truncated += bool(own[2] & TRUNCATED)
            if (own[2] | kl[2]) & DROPPED:
                out.dropped += 1
                out.dropped_where.append(rows.where(i))
                continue
            for seq, part in ((out.ids, own[0]), (out.labels, own[1]), (out.kl_ids, kl[0]), (out.kl_labels, kl[1])):
                seq.append(part)
            out.desirable.append(bool(j.label))
            out.where.append(rows.where(i))
            out.prompts.append(j.prompt)
            out.references.append(j.completion)
            out.records.append(rows.records[i])
        if not out.ids:
            raise UserError(f"{rows.path}: no row fits train.max_length={recipe.train.max_length}; raise it")
        return out

    def prepare(self, splits, recipe, tokenizer) -> Prepared:
        self.in_memory(splits)
        p = Prepared(None, *(self.encode_rows(getattr(splits, s), recipe, tokenizer)
                             for s in ("train", "validation", "test")))
        if all(p.train.desirable) or not any(p.train.desirable):
            kind = "desirable" if p.train.desirable[0] else "undesirable"
            raise UserError(f"{splits.train.path}: every training row is {kind}; kto needs both labels "
                            "(true and false)")
        return p

    def conversations(self, rows: Rows, recipe) -> list[list[dict]]:
        """The liked conversations: the service's drift reference and plain rows."""
        return [j.prompt + [{"role": "assistant", "content": j.completion}]
                for j in self._judgements(rows, recipe) if j.label]

    def examples(self, rows: Rows, recipe) -> list:
        """Each judged answer, preferred or not by its label."""
        from ..data.preference import Example

        return [Example(j.prompt, j.completion, None) if j.label else Example(j.prompt, None, j.completion)
                for j in self._judgements(rows, recipe)]

    # -- batches -----------------------------------------------------------------
    def collate(self, data: JudgedEncoded, idx: list[int], pad_id: int) -> dict:
        """Rows [judged sequences..., their KL partners...], "desirable" per judged row, "reference"."""
        ids, mask = pad_batch([data.ids[i] for i in idx] + [data.kl_ids[i] for i in idx], pad_id)
        labels, _ = pad_batch([data.labels[i] for i in idx] + [data.kl_labels[i] for i in idx], IGNORE)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                 "desirable": torch.tensor([data.desirable[i] for i in idx])}
        if data.reference is not None:
            batch["reference"] = data.reference[idx].T.reshape(-1)
        return batch

    def loss_items(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] // 2

    def loss(self, model, batch: dict) -> torch.Tensor:
        model_batch = {k: v for k, v in batch.items() if k != "desirable"}
        sums, _ = sequence_logps(model, model_batch)
        ref = self.reference_sums(model, model_batch)
        n = len(sums) // 2
        o = self._opts
        return kto_loss(sums[:n] - ref[:n], sums[n:] - ref[n:], batch["desirable"], o.beta, o.desirable_weight,
                        o.undesirable_weight).mean()

    # -- evaluation -----------------------------------------------------------------
    def judged_metrics(self, sums: torch.Tensor, data: JudgedEncoded, reference: torch.Tensor | None) -> dict:
        """sums: [rows, 2] (judged, KL partner); reference likewise (None: no loss figure)."""
        good = torch.tensor(data.desirable)
        per_token = sums[:, 0] / data.answer_counts().clamp(min=1)
        out = {"logp_margin": float(per_token[good].mean() - per_token[~good].mean()) if good.any() and (~good).any()
               else None}
        if reference is not None:
            o = self._opts
            out["loss"] = float(kto_loss(sums[:, 0] - reference[:, 0], sums[:, 1] - reference[:, 1], good, o.beta,
                                         o.desirable_weight, o.undesirable_weight).mean())
        pairs = self._prompt_pairs(data)
        if pairs:
            out["preference_accuracy"] = sum(float(sums[d, 0] > sums[u, 0]) for d, u in pairs) / len(pairs)
        return out

    @staticmethod
    def _prompt_pairs(data: JudgedEncoded) -> list[tuple[int, int]]:
        """(liked row, disliked row) for every test prompt that has both."""
        import json

        by_prompt: dict[str, tuple[list[int], list[int]]] = {}
        for i, p in enumerate(data.prompts):
            by_prompt.setdefault(json.dumps(p, sort_keys=True), ([], []))[0 if data.desirable[i] else 1].append(i)
        return [(d, u) for good, bad in by_prompt.values() for d in good for u in bad]

    def evaluate(self, model, data: JudgedEncoded, labels, pad_id: int, batch_size: int, device) -> dict:
        sums = split_logps(model, data, self.collate, pad_id, batch_size, device)
        return self.judged_metrics(sums, data, self.reference_split(model, data, pad_id, batch_size, device))

    def evaluate_test(self, model, tokenizer, data: JudgedEncoded, recipe, info: dict, device) -> dict:
        from ..recipe import eval_batch_size

        self.objective_options(recipe)
        data = data.head(min(len(data), self.max_eval_rows(recipe)))
        bs, pad = eval_batch_size(recipe), tokenizer.pad_token_id
        liked = [i for i, d in enumerate(data.desirable) if d]
        chats = _liked_chats(data, liked)
        base_model = self.load_model(info["base_model_path"], recipe, tokenizer).to(device)
        base_sums = split_logps(base_model, data, self.collate, pad, bs, device)
        baseline = {**self.judged_metrics(base_sums, data, base_sums), "kind": "base_model"}
        base_preds = []
        if liked:
            scores, base_preds = self._answers(base_model, tokenizer, chats, recipe, device)
            baseline.update(scores)
        del base_model
        sums = split_logps(model, data, self.collate, pad, bs, device)
        tuned = self.judged_metrics(sums, data, base_sums)
        preds = []
        if liked:
            scores, preds = self._answers(model, tokenizer, chats, recipe, device)
            tuned.update(scores)
        rows = [{"where": data.where[i], "prompt": data.prompts[i][-1]["content"], "reference": data.references[i],
                 "desirable": data.desirable[i], "tuned_logratio": round(float(sums[i, 0] - base_sums[i, 0]), 4)}
                for i in range(len(data))]
        for k, i in enumerate(liked):  # generated answers for the liked rows (their answer is the reference)
            rows[i].update(tuned=preds[k], baseline=base_preds[k])
        tuned["samples"] = baseline["samples"] = [
            {k: rows[i][k] for k in ("prompt", "reference", "tuned", "baseline")} for i in liked[:5]]
        return {"tuned": tuned, "baseline": baseline, "predictions": rows}

    def evaluation_extras(self, result, preds, data, model, tokenizer, recipe, info, device, base_dir) -> None:
        """Slices and counterfactuals need a generated answer per row: only the liked rows have one."""

    def verdict_metrics(self, recipe, data) -> list[str]:
        return list(recipe.eval.headline or ["logp_margin"])


def _liked_chats(data: JudgedEncoded, liked: list[int]):
    from .generate import ChatEncoded

    return ChatEncoded([data.ids[i] for i in liked], [data.labels[i] for i in liked], [data.where[i] for i in liked],
                       [data.prompts[i] for i in liked], [data.references[i] for i in liked])

