"""Metrics for generated text: exact match, BLEU and chrF (sacrebleu), ROUGE-L (rouge-score)."""

from __future__ import annotations

import re


def normalise(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def text_metrics(predictions: list[str], references: list[str]) -> dict:
    """exact_match and rougeL in 0..1; bleu, chrf and chrf_per_answer on sacrebleu's 0..100 scale;
    length_ratio near 1 when answers are as long as the references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if not predictions:
        return {"exact_match": None, "bleu": None, "chrf": None, "chrf_per_answer": None, "rougeL": None,
                "length_ratio": None}
    em = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references)) / len(predictions)
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    chrf = sacrebleu.corpus_chrf(predictions, [references]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rl = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)
    # chrF as sacrebleu reports it sums character n-gram counts over the corpus, so long references
    # weigh most; the mean over answers weighs every answer alike (as ROUGE-L here does). The length
    # ratio (words generated / reference words) shows which way brevity moves them: chrF weighs
    # recall twice.
    per_answer = sum(sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references)) / len(predictions)
    ref_words = sum(len(r.split()) for r in references)
    ratio = sum(len(p.split()) for p in predictions) / ref_words if ref_words else None
    return {"exact_match": em, "bleu": bleu, "chrf": chrf, "chrf_per_answer": per_answer, "rougeL": rl,
            "length_ratio": ratio}
