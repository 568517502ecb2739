"""text_similarity's metrics, each a function (answer, reference) -> 0..1.

Libraries load on first use, so checking a recipe never imports them.
- fuzzy_match: rapidfuzz's fuzz.ratio (normalised Indel similarity of the whole strings). Not
  WRatio: WRatio scores a short answer that is a substring of the reference at 90, which a
  policy trained on the reward learns to exploit.
- bleu: sacrebleu's sentence BLEU / 100 (its default smoothing and tokeniser).
- gleu, meteor: NLTK's sentence scores on word tokens (\\w+ and single punctuation marks).
  METEOR needs NLTK's WordNet data; `meteor_available` says whether it is installed.
- rouge_N, rouge_l: rouge-score's F-measure, with the Porter stemmer as tuneline's own
  ROUGE-L in evaluation uses.
"""

from __future__ import annotations

import re
from functools import cache

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def fuzzy_match(answer: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(answer, reference) / 100


def bleu(answer: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(answer, [reference]).score / 100


def gleu(answer: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    hyp, ref = tokens(answer), tokens(reference)
    return sentence_gleu([ref], hyp) if hyp and ref else float(hyp == ref)


def meteor(answer: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return meteor_score([tokens(reference)], tokens(answer))


@cache
def _rouge(key: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key], use_stemmer=True)


def rouge(key: str):
    def score(answer: str, reference: str) -> float:
        return _rouge(key).score(reference, answer)[key].fmeasure

    return score


METRICS = {"fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor,
           **{f"rouge_{n}": rouge(f"rouge{n}") for n in range(1, 6)}, "rouge_l": rouge("rougeL")}


def meteor_available() -> bool:
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return True
    except LookupError:
        return False
