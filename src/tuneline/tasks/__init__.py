"""Tasks: how rows become tensors, which head, how to predict, which metrics.

Each task class offers the same methods, used by the pipeline, the loop and load_run:
  strata(rows, recipe)                       labels for a stratified split, or None
  prepare(splits, recipe, tokenizer)         -> Prepared(labels, train, validation, test)
  encode_rows(rows, recipe, tokenizer, labels)
  load_model(path, recipe, tokenizer, labels) / load_trained(folder)
  collate(data, idx, pad_id) -> batch (with attention_mask);  loss(model, batch)
  evaluate(model, data, labels, pad_id, batch_size, device)   quick validation metrics
  evaluate_test(model, tokenizer, data, recipe, info, device) -> {"tuned", "baseline"}
  predict(model, tokenizer, texts, max_length, batch_size, options, system_prompt)
"""

from __future__ import annotations

from ..errors import UserError


def get_task(name: str):
    if name == "classify":
        from .classify import ClassifyTask

        return ClassifyTask()
    if name == "generate":
        from .generate import GenerateTask

        return GenerateTask()
    raise UserError(f"task: unknown {name!r}; allowed: classify, generate")
