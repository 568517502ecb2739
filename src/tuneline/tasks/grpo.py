"""Objective `grpo` of task `generate`: learning from rewards that graders give sampled answers.

GRPO (Shao et al. 2024) as practised now (DAPO, Dr. GRPO, TRL's defaults): per prompt a group of
`grpo.num_generations` answers is sampled with the KV cache; the graders (`rewards:`, rewards/)
score each; an answer's advantage is its reward minus the group's mean (divided by the group's
spread unless `grpo.scale_rewards: false`); the loss is the clipped-ratio policy gradient summed
over answer tokens and divided by their number (token-level normalisation), plus `grpo.beta`
times the k3 KL estimate to the reference when beta > 0 (off by default). One optimisation pass
per batch of generations (TRL's num_iterations=1): the ratio is 1 at the sampled weights, so
the clip matters only through dropout; its share is logged all the same.

The loop is the one every objective uses: a batch holds prompts (and their row numbers, for
the graders' `{{item.*}}` fields); the sampling happens inside `loss`, so pieces of a batch,
accumulation, the guard, checkpoints and resume work as for sft.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.batching import pad_batch
from ..data.chat import IGNORE, ensure_chat_template, render_chat
from ..data.io import Rows
from ..errors import UserError
from ..evaluation.text_metrics import text_metrics
from . import register_objective
from .generate import GenerateTask
from .logprobs import as_reference, is_adapter_model, token_logps
from .objective import ObjectiveParts


@dataclass
class PromptEncoded:
    prompt_ids: list[list[int]]      # the conversation rendered with the generation prompt
    where: list[str]
    prompts: list[list[dict]]
    items: list[dict]                # the rows as the graders see them ({{item.FIELD}})
    references: list[str | None]     # a final assistant answer of the row, if it had one
    answer_tokens: int = 32          # grpo.max_new_tokens: part of what a row costs
    group: int = 8                   # grpo.num_generations
    records: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Padded tokens a row costs in training: its group of prompt + answer sequences."""
        return np.array([self.group * (len(p) + self.answer_tokens) for p in self.prompt_ids], dtype=np.int64)

    def head(self, n: int) -> PromptEncoded:
        return PromptEncoded(self.prompt_ids[:n], self.where[:n], self.prompts[:n], self.items[:n],
                             self.references[:n], self.answer_tokens, self.group, self.records[:n])


@dataclass
class Prepared:
    labels: None
    train: PromptEncoded
    validation: PromptEncoded
    test: PromptEncoded


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """rewards: [prompts x group] in prompt order. Each reward minus its group's mean, divided by
    the group's standard deviation (+1e-4) when `scale`. A group of equal rewards gets zeros."""
    r = rewards.view(-1, group)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def policy_loss(logps, old_logps, advantages, epsilon: float, ref_logps=None, beta: float = 0.0):
    """Per answer token: -min(ρA, clip(ρ, 1-ε, 1+ε)A) with ρ = exp(logp - old logp), plus β times
    the k3 KL estimate exp(ref - logp) - (ref - logp) - 1 when beta > 0. Returns (losses, clipped
    mask, kl per token or None)."""
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + epsilon)
    losses = -torch.min(ratio * advantages, clipped_ratio * advantages)
    clipped = (ratio * advantages) > (clipped_ratio * advantages)
    kl = None
    if beta > 0 and ref_logps is not None:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        losses = losses + beta * kl
    return losses, clipped, kl


def answer_mask(answers: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 for the tokens of each sampled answer up to and including its first end token."""
    is_end = torch.isin(answers, torch.tensor(eos_ids, device=answers.device))
    after_end = (is_end.cumsum(1) - is_end.long()) > 0  # tokens after the first end token
    return (~after_end).long()


@register_objective
class GRPOTask(ObjectiveParts, GenerateTask):
    objective = "grpo"
    data_shape = "prompts"
    metric_names = ("reward", "pass_rate")
    default_metric = "reward"
    headline_metrics = ("reward", "pass_rate", "answer_words", "exact_match", "chrf", "chrf_per_answer", "rougeL")
    key_metric = "reward"
    train_figures = ("reward", "reward_std", "pass_rate", "clipped", "kl")
    train_lengths = ("answer_tokens",)
    loss_falls = False  # advantages are centred on zero per group: the loss hovers around 0

    def __init__(self):
        self.frozen = None  # the reference for grpo.beta > 0 under full tuning
        self._recipe = None
        self._graders = None
        self._stats: list[dict] = []
        self.train_data = None
        self.equal_lengths = False

    def graders(self, recipe):
        """The recipe's graders, loaded once (model graders load their model)."""
        if self._graders is None:
            from ..rewards import load_graders

            self._graders = load_graders(recipe.rewards)
        return self._graders

    # -- data -------------------------------------------------------------------
    def _prompt_rows(self, rows: Rows, recipe):
        from ..data.preference import to_prompt

        return [to_prompt(rec, rows.where(i), recipe.generate.system_prompt) for i, rec in enumerate(rows.records)]

    def encode_rows(self, rows: Rows, recipe, tokenizer, labels=None) -> PromptEncoded:
        ensure_chat_template(tokenizer)
        o = self.objective_options(recipe)
        self._recipe = recipe
        out = PromptEncoded([], [], [], [], [], o.max_new_tokens, o.num_generations)
        for i, p in enumerate(self._prompt_rows(rows, recipe)):
            ids = tokenizer(render_chat(tokenizer, p.prompt, gen=True), add_special_tokens=False)["input_ids"]
            out.prompt_ids.append(ids[-recipe.train.max_length:])  # the prompt's end leads to the answer
            out.where.append(rows.where(i))
            out.prompts.append(p.prompt)
            out.items.append(p.item)
            out.references.append(p.reference)
            out.records.append(rows.records[i])
        return out

    def prepare(self, splits, recipe, tokenizer) -> Prepared:
        self.in_memory(splits)
        self.graders(recipe)  # a grader that cannot load fails before training
        p = Prepared(None, *(self.encode_rows(getattr(splits, s), recipe, tokenizer)
                             for s in ("train", "validation", "test")))
        # what `loss` reads besides the batch (the dry run's probe calls it without a trainer)
        self.train_data, self.tokenizer, self.pad_id = p.train, tokenizer, tokenizer.pad_token_id
        return p

    def conversations(self, rows: Rows, recipe) -> list[list[dict]]:
        """Prompts with their reference answer where the row has one: drift reference and plain rows."""
        return [p.prompt + [{"role": "assistant", "content": p.reference or ""}] for p in self._prompt_rows(rows, recipe)]

    # -- batches -------------------------------------------------------------------
    def collate(self, data: PromptEncoded, idx: list[int], pad_id: int) -> dict:
        ids, mask = pad_batch([data.prompt_ids[i] for i in idx], pad_id, side="left")
        return {"input_ids": ids, "attention_mask": mask, "rows": torch.tensor(idx)}

    def loss_items(self, batch: dict) -> int:
        return batch["input_ids"].shape[0]  # prompts: each prompt's group is one term

    def before_training(self, trainer) -> None:
        self.train_data = trainer.train_data
        self.pad_id = trainer.pad_id
        self.tokenizer = trainer.tokenizer
        o = self.objective_options(trainer.recipe)
        self._recipe = trainer.recipe
        # FSDP gathers a block's weights in each forward: every rank must sample as many tokens
        self.equal_lengths = trainer.sharded
        if o.beta > 0 and not is_adapter_model(trainer.model):
            if trainer.sharded:
                raise UserError("grpo.beta > 0 with full tuning needs a frozen reference copy, which a sharded run "
                                "does not keep; use an adapter method or grpo.beta: 0")
            self.frozen = copy.deepcopy(trainer.model).eval().requires_grad_(False)

    def loss(self, model, batch: dict) -> torch.Tensor:
        o, recipe = self._opts, self._recipe
        rows = batch["rows"].tolist()
        seqs, prompt_len = self._sample(model, batch, o)
        answers = seqs[:, prompt_len:]
        amask = answer_mask(answers, self._eos_ids(model))
        texts = self.tokenizer.batch_decode(answers * amask + self.pad_id * (1 - amask), skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        items = [self.train_data.items[i] for i in rows for _ in range(o.num_generations)]
        scores = self.graders(recipe).score_many(items, texts)
        rewards = torch.tensor([s["score"] for s in scores], dtype=torch.float32, device=seqs.device)
        adv = group_advantages(rewards, o.num_generations, o.scale_rewards)
        attn = torch.cat([batch["attention_mask"].repeat_interleave(o.num_generations, 0), amask], 1)
        labels = torch.full_like(seqs, IGNORE)
        labels[:, prompt_len:] = torch.where(amask.bool(), answers, IGNORE)
        b = {"input_ids": seqs, "attention_mask": attn, "labels": labels,
             "position_ids": (attn.cumsum(1) - 1).clamp(min=0)}  # left-padded prompts: positions as in sampling
        logps, row_of = token_logps(model, b)
        ref = None
        if o.beta > 0:
            with as_reference(self.frozen if self.frozen is not None else model) as r:
                ref = token_logps(r, b)[0]
        losses, clipped, kl = policy_loss(logps, logps.detach(), adv[row_of], o.epsilon, ref, o.beta)
        n_tokens = max(int(amask.sum()), 1)
        self._stats.append({"reward": float(rewards.mean()), "reward_std": float(rewards.view(-1, o.num_generations)
                                                                                 .std(1).mean()),
                            "pass_rate": sum(s["passed"] for s in scores) / len(scores),
                            "answer_tokens": n_tokens / len(texts), "clipped": float(clipped.float().mean()),
                            **({"kl": float(kl.mean())} if kl is not None else {})})
        return losses.sum() / n_tokens

    @torch.no_grad()
    def _sample(self, model, batch: dict, o) -> tuple[torch.Tensor, int]:
        """num_generations answers per prompt, sampled with the KV cache in eval mode (no dropout)."""
        was = model.training
        model.eval()
        ids = batch["input_ids"].repeat_interleave(o.num_generations, 0)
        mask = batch["attention_mask"].repeat_interleave(o.num_generations, 0)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=o.temperature,
                             top_p=o.top_p, top_k=None, max_new_tokens=o.max_new_tokens,
                             min_new_tokens=o.max_new_tokens if self.equal_lengths else None,
                             eos_token_id=self._eos_ids(model), pad_token_id=self.pad_id)
        model.train(was)
        return out, ids.shape[1]

    def _eos_ids(self, model) -> list[int]:
        eos = {self.tokenizer.eos_token_id}
        cfg = getattr(model, "generation_config", None)
        if cfg is not None and cfg.eos_token_id is not None:
            eos |= set(cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id])
        eos.discard(None)
        return sorted(eos)

    def train_stats(self) -> dict:
        """Means over the steps since the last log line: reward, its spread within groups, pass
        rate, answer length in tokens, share of clipped tokens, KL (beta > 0)."""
        if not self._stats:
            return {}
        keys = dict.fromkeys(k for s in self._stats for k in s)
        out = {k: round(sum(s[k] for s in self._stats if k in s) / sum(k in s for s in self._stats), 4) for k in keys}
        self._stats = []
        return out

    # -- evaluation -----------------------------------------------------------------
    def _greedy(self, model, tokenizer, data: PromptEncoded, recipe) -> list[str]:
        from ..recipe import eval_batch_size

        return self.generate(model, tokenizer, data.prompts, recipe.generate, batch_size=eval_batch_size(recipe),
                             max_length=recipe.train.max_length)

    def graded(self, answers: list[str], data: PromptEncoded, recipe) -> tuple[dict, list[dict]]:
        scores = self.graders(recipe).score_many(data.items, answers)
        n = max(len(scores), 1)
        m = {"reward": sum(s["score"] for s in scores) / n, "pass_rate": sum(s["passed"] for s in scores) / n,
             "answer_words": sum(len(a.split()) for a in answers) / n}
        for name in self.graders(recipe).names if len(self.graders(recipe).names) > 1 else []:
            m[f"reward_{name}"] = sum(s["by_grader"][name] for s in scores) / n
        return m, scores

    def evaluate(self, model, data: PromptEncoded, labels, pad_id: int, batch_size: int, device) -> dict:
        """Greedy answers to the validation prompts, graded (at most eval.max_samples of them)."""
        recipe = self._recipe
        data = data.head(min(len(data), self.max_eval_rows(recipe)))
        return self.graded(self._greedy(model, self.tokenizer, data, recipe), data, recipe)[0]

    def evaluate_test(self, model, tokenizer, data: PromptEncoded, recipe, info: dict, device) -> dict:
        self.objective_options(recipe)
        self._recipe, self.tokenizer = recipe, tokenizer
        data = data.head(min(len(data), self.max_eval_rows(recipe)))
        base_model = self.load_model(info["base_model_path"], recipe, tokenizer).to(device)
        base_answers = self._greedy(base_model, tokenizer, data, recipe)
        del base_model
        answers = self._greedy(model, tokenizer, data, recipe)
        tuned, tuned_scores = self.graded(answers, data, recipe)
        baseline, base_scores = self.graded(base_answers, data, recipe)
        have_refs = [i for i, r in enumerate(data.references) if r]
        if have_refs:
            refs = [data.references[i] for i in have_refs]
            tuned.update(text_metrics([answers[i] for i in have_refs], refs))
            baseline.update(text_metrics([base_answers[i] for i in have_refs], refs))
        baseline["kind"] = "base_model"
        tuned["generated"] = baseline["generated"] = len(data)
        rows = [{"where": data.where[i], "prompt": data.prompts[i][-1]["content"], "reference": data.references[i],
                 "tuned": answers[i], "baseline": base_answers[i], "tuned_reward": round(tuned_scores[i]["score"], 4),
                 "baseline_reward": round(base_scores[i]["score"], 4)} for i in range(len(data))]
        tuned["samples"] = baseline["samples"] = [
            {k: r[k] for k in ("prompt", "reference", "tuned", "baseline")} for r in rows[:5]]
        return {"tuned": tuned, "baseline": baseline, "predictions": rows}

    def evaluation_extras(self, result, preds, data, model, tokenizer, recipe, info, device, base_dir) -> None:
        """Slices by reward."""
        from ..evaluation.slices import slice_metrics

        rewards = [p["tuned_reward"] for p in preds]

        def score(idx):
            return {"reward": sum(rewards[i] for i in idx) / max(len(idx), 1)}

        result["slices"] = [slice_metrics(c, data.records[:len(preds)], score, "reward") for c in recipe.eval.slices]

    def verdict_metrics(self, recipe, data) -> list[str]:
        return list(recipe.eval.headline or ["reward"])

