"""Objectives `dpo`, `simpo` and `orpo` of task `generate`: learning from preference pairs.

A pair is a prompt with a chosen and a rejected answer (data/preference.py reads TRL's and
OpenAI's files). Both answers of a row go through the model in one batch; the objective's loss
compares their summed (or per-token mean) log-probabilities. DPO also compares them with a
reference: the untuned model, whose log-probs are computed once before training by default
(`dpo.precompute_reference`), otherwise at every step through the base with the adapter switched
off, or a frozen copy under full tuning.

Evaluation adds to the generate task's figures `preference_accuracy` (the share of pairs whose
chosen answer the model finds more likely, by summed log-prob) and `logp_margin` (the mean
difference), for the tuned model and the untuned base alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batching import pad_batch
from ..data.chat import IGNORE, ensure_chat_template
from ..data.io import Rows
from ..errors import UserError
from ..evaluation.text_metrics import text_metrics
from ..recipe import eval_batch_size
from . import register_objective
from .generate import DROPPED, TRUNCATED, ChatEncoded, GenerateTask, encode_row
from .logprobs import sequence_logps, split_logps
from .objective import ObjectiveParts, ReferenceParts


@dataclass
class PairEncoded:
    """Encoded pairs: per row a chosen and a rejected sequence (prompt + answer, labels on the answer)."""
    chosen_ids: list[list[int]]
    chosen_labels: list[list[int]]
    rejected_ids: list[list[int]]
    rejected_labels: list[list[int]]
    where: list[str]
    prompts: list[list[dict]]
    references: list[str]       # the chosen answers (generated answers are scored against them)
    rejected: list[str]
    records: list[dict] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    dropped_where: list[str] = field(default_factory=list)
    reference: torch.Tensor | None = None  # [rows, 2]: the reference's summed log-probs (chosen, rejected)

    def __len__(self) -> int:
        return len(self.chosen_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Padded tokens a row costs: both sequences at the longer one's length."""
        return np.array([2 * max(len(c), len(r)) for c, r in zip(self.chosen_ids, self.rejected_ids)], dtype=np.int64)

    def head(self, n: int) -> PairEncoded:
        ref = self.reference[:n] if self.reference is not None else None
        return PairEncoded(self.chosen_ids[:n], self.chosen_labels[:n], self.rejected_ids[:n], self.rejected_labels[:n],
                           self.where[:n], self.prompts[:n], self.references[:n], self.rejected[:n], self.records[:n],
                           self.truncated, self.dropped, self.dropped_where, ref)

    def chosen_split(self) -> ChatEncoded:
        """The chosen conversations as a chat split (loss, perplexity and generation as in sft)."""
        return ChatEncoded(self.chosen_ids, self.chosen_labels, self.where, self.prompts, self.references,
                           records=self.records)

    def answer_counts(self) -> torch.Tensor:
        """[rows, 2]: answer tokens of the chosen and the rejected sequence (after the shift)."""
        count = lambda labels: sum(1 for t in labels[1:] if t != IGNORE)
        return torch.tensor([[count(c), count(r)] for c, r in zip(self.chosen_labels, self.rejected_labels)],
                            dtype=torch.float32)


@dataclass
class Prepared:
    labels: None
    train: PairEncoded
    validation: PairEncoded
    test: PairEncoded


class PreferenceTask(ObjectiveParts, ReferenceParts, GenerateTask):
    """What the pair objectives share; a subclass sets `objective` and `pair_loss`."""
    data_shape = "pairs"
    uses_reference = False  # DPO's is True
    metric_names = ("loss", "preference_accuracy", "logp_margin")
    headline_metrics = ("preference_accuracy", "logp_margin", "loss", "perplexity", "exact_match", "chrf",
                        "chrf_per_answer", "rougeL", "length_ratio")
    key_metric = "preference_accuracy"

    def pair_loss(self, pc, pr, nc, nr, rc, rr) -> torch.Tensor:
        """Per pair: the loss from summed answer log-probs of the chosen (pc) and rejected (pr)
        answers, their token counts (nc, nr) and the reference's sums (rc, rr; None when the
        objective has no reference)."""
        raise NotImplementedError

    # -- data -------------------------------------------------------------------
    def encode_rows(self, rows: Rows, recipe, tokenizer, labels=None) -> PairEncoded:
        from ..data.preference import detect_preference_format, to_pair

        ensure_chat_template(tokenizer)
        self.objective_options(recipe)
        fmt = recipe.data.format if recipe.data.format != "auto" else detect_preference_format(rows, "pairs")
        # only the final answer counts: a prompt's earlier assistant turns are context
        options = recipe.generate.model_copy(update={"loss_on": "last_assistant"})
        out = PairEncoded(*([] for _ in range(9)))
        for i, rec in enumerate(rows.records):
            pair = to_pair(rec, rows.where(i), fmt, recipe.generate.system_prompt)
            if pair.tools:  # silently training without them would teach answers to a different prompt
                raise UserError(f"{rows.where(i)}: input.tools: tool definitions are not rendered into the prompt "
                                "by tuneline yet; remove them or the row")
            chosen = encode_row(tokenizer, pair.prompt + [{"role": "assistant", "content": pair.chosen}], options,
                                recipe.train.max_length)
            rejected = encode_row(tokenizer, pair.prompt + [{"role": "assistant", "content": pair.rejected}], options,
                                  recipe.train.max_length)
            out.truncated += bool((chosen[2] | rejected[2]) & TRUNCATED)
            if (chosen[2] | rejected[2]) & DROPPED:
                out.dropped += 1
                out.dropped_where.append(rows.where(i))
                continue
            for seq, part in ((out.chosen_ids, chosen[0]), (out.chosen_labels, chosen[1]),
                              (out.rejected_ids, rejected[0]), (out.rejected_labels, rejected[1])):
                seq.append(part)
            out.where.append(rows.where(i))
            out.prompts.append(pair.prompt)
            out.references.append(pair.chosen)
            out.rejected.append(pair.rejected)
            out.records.append(rec)
        if not out.chosen_ids:
            raise UserError(f"{rows.path}: no pair fits train.max_length={recipe.train.max_length}; raise it")
        return out

    def prepare(self, splits, recipe, tokenizer) -> Prepared:
        self.in_memory(splits)
        p = Prepared(None, *(self.encode_rows(getattr(splits, s), recipe, tokenizer)
                             for s in ("train", "validation", "test")))
        for name in ("train", "validation", "test"):
            e = getattr(p, name)
            if e.truncated or e.dropped:
                print(f"{name}: {e.truncated} pairs cut to train.max_length={recipe.train.max_length}, "
                      f"{e.dropped} dropped" + (f" (e.g. {e.dropped_where[0]})" if e.dropped_where else ""), flush=True)
        return p

    def conversations(self, rows: Rows, recipe) -> list[list[dict]]:
        """The chosen conversations: the service's drift reference and plain rows."""
        from ..data.preference import detect_preference_format, to_pair

        fmt = recipe.data.format if recipe.data.format != "auto" else detect_preference_format(rows, "pairs")
        pairs = [to_pair(rec, rows.where(i), fmt, recipe.generate.system_prompt) for i, rec in enumerate(rows.records)]
        return [p.prompt + [{"role": "assistant", "content": p.chosen}] for p in pairs]

    def examples(self, rows: Rows, recipe) -> list:
        """Each pair as it is."""
        from ..data.preference import Example, detect_preference_format, to_pair

        fmt = recipe.data.format if recipe.data.format != "auto" else detect_preference_format(rows, "pairs")
        pairs = (to_pair(rec, rows.where(i), fmt, recipe.generate.system_prompt) for i, rec in enumerate(rows.records))
        return [Example(p.prompt, p.chosen, p.rejected) for p in pairs]

    # -- batches -----------------------------------------------------------------
    def collate(self, data: PairEncoded, idx: list[int], pad_id: int) -> dict:
        """Rows [chosen of each row..., rejected of each row...]; "reference": their reference sums."""
        ids, mask = pad_batch([data.chosen_ids[i] for i in idx] + [data.rejected_ids[i] for i in idx], pad_id)
        labels, _ = pad_batch([data.chosen_labels[i] for i in idx] + [data.rejected_labels[i] for i in idx], IGNORE)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if data.reference is not None:
            batch["reference"] = data.reference[idx].T.reshape(-1)
        return batch

    def loss_items(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] // 2  # pairs: each pair's loss is one term of the mean

    def loss(self, model, batch: dict) -> torch.Tensor:
        sums, counts = sequence_logps(model, batch)
        n = len(sums) // 2
        ref = self.reference_sums(model, batch)
        rc, rr = (ref[:n], ref[n:]) if ref is not None else (None, None)
        return self.pair_loss(sums[:n], sums[n:], counts[:n], counts[n:], rc, rr).mean()

    # -- evaluation -----------------------------------------------------------------
    def pair_metrics(self, sums: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None) -> dict:
        """From [rows, 2] summed log-probs (chosen, rejected), token counts and the reference's sums."""
        pc, pr = sums[:, 0], sums[:, 1]
        rc, rr = (reference[:, 0], reference[:, 1]) if reference is not None else (None, None)
        loss = self.pair_loss(pc, pr, counts[:, 0], counts[:, 1], rc, rr)
        return {"loss": float(loss.mean()), "preference_accuracy": float((pc > pr).float().mean()),
                "logp_margin": float((pc - pr).mean())}

    def evaluate(self, model, data: PairEncoded, labels, pad_id: int, batch_size: int, device) -> dict:
        sums = split_logps(model, data, self.collate, pad_id, batch_size, device)
        reference = self.reference_split(model, data, pad_id, batch_size, device)
        return self.pair_metrics(sums, data.answer_counts(), reference)

    def _answers(self, model, tokenizer, chats: ChatEncoded, recipe, device) -> tuple[dict, list[str]]:
        """Perplexity of the chosen answers and generated answers scored against them."""
        bs = eval_batch_size(recipe)
        nll = self.token_loss(model, chats, tokenizer.pad_token_id, bs, device)
        preds = self.generate(model, tokenizer, chats.prompts, recipe.generate, batch_size=bs,
                              max_length=recipe.train.max_length)
        return {"perplexity": math.exp(min(nll, 50)), **text_metrics(preds, chats.references),
                "generated": len(chats)}, preds

    def evaluate_test(self, model, tokenizer, data: PairEncoded, recipe, info: dict, device) -> dict:
        self.objective_options(recipe)
        data = data.head(min(len(data), self.max_eval_rows(recipe)))
        bs, pad, counts = eval_batch_size(recipe), tokenizer.pad_token_id, data.answer_counts()
        base_model = self.load_model(info["base_model_path"], recipe, tokenizer).to(device)
        base_sums = split_logps(base_model, data, self.collate, pad, bs, device)
        ref = base_sums if self.uses_reference else None  # the untuned base is the reference
        baseline = {**self.pair_metrics(base_sums, counts, ref), "kind": "base_model"}
        scores, base_preds = self._answers(base_model, tokenizer, data.chosen_split(), recipe, device)
        baseline.update(scores)
        del base_model
        sums = split_logps(model, data, self.collate, pad, bs, device)
        tuned = self.pair_metrics(sums, counts, ref)
        scores, preds = self._answers(model, tokenizer, data.chosen_split(), recipe, device)
        tuned.update(scores)
        rows = [{"where": data.where[i], "prompt": data.prompts[i][-1]["content"], "reference": data.references[i],
                 "rejected": data.rejected[i], "tuned": preds[i], "baseline": base_preds[i],
                 "tuned_margin": round(float(sums[i, 0] - sums[i, 1]), 4),
                 "baseline_margin": round(float(base_sums[i, 0] - base_sums[i, 1]), 4)} for i in range(len(data))]
        tuned["samples"] = baseline["samples"] = [
            {k: r[k] for k in ("prompt", "reference", "tuned", "baseline")} for r in rows[:5]]
        return {"tuned": tuned, "baseline": baseline, "predictions": rows}

    def evaluation_extras(self, result, preds, data: PairEncoded, model, tokenizer, recipe, info, device,
                          base_dir) -> None:
        super().evaluation_extras(result, preds, data.chosen_split(), model, tokenizer, recipe, info, device,
                                  base_dir)

    def verdict_metrics(self, recipe, data) -> list[str]:
        return list(recipe.eval.headline or ["preference_accuracy"])


def dpo_loss(pc, pr, rc, rr, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             nc=None, nr=None, sft_weight: float = 0.0) -> torch.Tensor:
    """Per pair. h = (pc - rc) - (pr - rr): how much more the model prefers the chosen answer than
    the reference does. sigmoid: -log σ(βh) (label smoothing ε: (1-ε)·that - ε·log σ(-βh));
    ipo: (h - 1/(2β))² on per-token mean log-probs (nc, nr: answer token counts); hinge: max(0, 1 - βh).
    Plus sft_weight times the chosen answer's mean NLL, -pc/nc (RPO)."""
    if loss_type == "ipo":
        h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
        loss = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * ((pc - rc) - (pr - rr)))
    else:
        h = (pc - rc) - (pr - rr)
        loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return loss - sft_weight * pc / nc if sft_weight else loss


def simpo_loss(pc, pr, nc, nr, beta: float, gamma: float, sft_weight: float = 0.0) -> torch.Tensor:
    """Per pair: -log σ(β·(pc/nc - pr/nr) - γ), plus sft_weight times the chosen answer's mean NLL."""
    avg_c, avg_r = pc / nc, pr / nr
    return -F.logsigmoid(beta * (avg_c - avg_r) - gamma) - sft_weight * avg_c


def orpo_loss(pc, pr, nc, nr, beta: float) -> torch.Tensor:
    """Per pair: the chosen answer's mean NLL - β·log σ(log odds(chosen) - log odds(rejected)), with
    log odds(p) = log p - log(1 - p) on the per-token mean log-prob (the paper; TRL's ORPOTrainer
    pools the NLL over the batch's tokens instead of averaging per pair)."""
    avg_c, avg_r = pc / nc, pr / nr
    log_odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c).clamp(max=1 - 1e-6))
                                  - torch.log1p(-torch.exp(avg_r).clamp(max=1 - 1e-6)))
    return -avg_c - beta * F.logsigmoid(log_odds)


@register_objective
class DPOTask(PreferenceTask):
    objective = "dpo"
    uses_reference = True

    def pair_loss(self, pc, pr, nc, nr, rc, rr):
        o = self._opts
        return dpo_loss(pc, pr, rc, rr, o.beta, o.loss_type, o.label_smoothing, nc.clamp(min=1), nr.clamp(min=1),
                        o.sft_weight)


@register_objective
class SimPOTask(PreferenceTask):
    objective = "simpo"

    def pair_loss(self, pc, pr, nc, nr, rc, rr):
        o = self._opts
        return simpo_loss(pc, pr, nc.clamp(min=1), nr.clamp(min=1), o.beta, o.gamma, o.sft_weight)


@register_objective
class ORPOTask(PreferenceTask):
    objective = "orpo"

    def pair_loss(self, pc, pr, nc, nr, rc, rr):
        return orpo_loss(pc, pr, nc.clamp(min=1), nr.clamp(min=1), self._opts.beta)
