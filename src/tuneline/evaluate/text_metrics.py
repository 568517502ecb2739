"""Metrics for generated text: exact match, BLEU and chrF (sacrebleu), ROUGE-L (rouge-score)."""

from __future__ import annotations

import re


def normalise(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def text_metrics(predictions: list[str], references: list[str]) -> dict:
    """exact_match and rougeL in 0..1; bleu and chrf on sacrebleu's 0..100 scale."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if not predictions:
        return {"exact_match": None, "bleu": None, "chrf": None, "rougeL": None}
    em = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references)) / len(predictions)
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    chrf = sacrebleu.corpus_chrf(predictions, [references]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rl = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)
    return {"exact_match": em, "bleu": bleu, "chrf": chrf, "rougeL": rl}
