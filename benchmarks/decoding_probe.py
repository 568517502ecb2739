"""Decoding choices on a generate run's test rows: how answer length moves chrF and ROUGE-L.

    python benchmarks/decoding_probe.py runs/dolly-1k                       # tuned model, greedy
    python benchmarks/decoding_probe.py runs/dolly-1k --base                # the untuned base model
    python benchmarks/decoding_probe.py runs/dolly-1k --no-repeat-ngram 4 --eos-floor 0.8

Scores the first --rows rows of the run's test file (Dolly: ../shared/data/instructions) with the
same text metrics as `tuneline evaluate`. --eos-floor is a probe, not a tuneline option: the end of
the answer is allowed only where the model gives the end-of-turn token at least that probability,
which counters greedy decoding's habit of stopping at the first likely end.
"""

from __future__ import annotations

import argparse
import json
import time


def eos_floor(eos_ids: list[int], floor: float):
    import torch
    from transformers import LogitsProcessor

    class EosFloor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            p_end = torch.softmax(scores.float(), -1)[:, eos_ids].sum(-1)
            too_early = (p_end < floor).nonzero().squeeze(-1)
            if too_early.numel():
                scores = scores.clone()
                scores[too_early[:, None], torch.tensor(eos_ids)[None, :]] = float("-inf")
            return scores

    return EosFloor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--base", action="store_true", help="decode with the untuned base model")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--no-repeat-ngram", type=int, default=0)
    ap.add_argument("--eos-floor", type=float, default=0.0)
    a = ap.parse_args()

    from transformers import LogitsProcessorList

    import tuneline
    from tuneline.data.io import read_rows
    from tuneline.evaluation.text_metrics import text_metrics

    run = tuneline.load_run(a.run)
    data = run.task.encode_rows(read_rows(run.test_data_path()), run.recipe, run.tokenizer, run.labels).head(a.rows)
    model = run.model
    if a.base:
        model = run.task.load_model(run.info["base_model_path"], run.recipe, run.tokenizer).eval()
    options = run.recipe.generate.model_copy(update={
        "max_new_tokens": a.max_new_tokens or run.recipe.generate.max_new_tokens,
        "repetition_penalty": a.repetition_penalty, "no_repeat_ngram_size": a.no_repeat_ngram})
    extra = {}
    if a.eos_floor > 0:
        gen_eos = model.generation_config.eos_token_id
        eos = {run.tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
        extra["logits_processor"] = LogitsProcessorList([eos_floor(sorted(eos), a.eos_floor)])
    t0 = time.perf_counter()
    answers = run.task.generate(model, run.tokenizer, data.prompts, options, batch_size=32,
                                max_length=run.max_length, **extra)
    scores = text_metrics(answers, data.references)
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"model": "base" if a.base else "tuned", "rows": len(answers), **vars(a),
                      **{k: round(v, 3) if isinstance(v, float) else v for k, v in scores.items()}}))


if __name__ == "__main__":
    main()
