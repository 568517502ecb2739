"""The task interface: everything that differs by task is asked of a `Task` object.

Outside `tasks/`, no code compares a task's name; it reads the attributes and calls the
methods below. A new task is one file with a `Task` subclass and one `register_task` call
(see docs/ARCHITECTURE.md, "How to add a task").

Attributes (class level; the defaults suit a task whose model is not a language model):

  name               the recipe's `task:` value and the name in run.json / eval.json
  objective          how it learns (the recipe's `objective:`): "sft" for a task's own class; an
                     objective's class (tasks.OBJECTIVES) subclasses its task's and names itself here
  options_section    recipe section with the task's own options (`generate:`), or None;
                     `options(recipe)` returns it and the run's tuneline.json keeps a copy
  model_class        Transformers auto class that loads the model and the trained model/
  peft_task_type     PEFT's TaskType member name for adapters
  pipeline_tag       the Hugging Face pipeline tag of the model card
  causal_lm          the model is a causal language model: its own perplexity on general text
                     measures forgetting, replay rows can be mixed in, an encoder is refused
  new_head           a task head that does not exist in the base model: trained in full under
                     adapters (PEFT modules_to_save) and by `freeze`
  data_shape         the row shape the data audit checks: "labelled_text" or "chat"
  metric_names       validation metrics (early stopping and search may watch these)
  default_metric     the validation metric watched when the recipe names none
  headline_metrics   test metrics shown in the terminal, report, model card and compare
  key_metric         the one test figure of the report's verdict and of `retrain`'s default
  serves             what `tuneline serve` answers: "classify" and/or "chat" (chat + completions)
  export_formats     the `tuneline export --format` values that apply
  report_sections    names in reporting.sections.SECTIONS drawn in this task's report
  train_figures      keys of `train_stats` (0-1 scores) drawn over steps in the report; train_lengths
                     likewise, in tokens
  loss_falls         the training loss is positive and falls as the model learns (the divergence
                     guard watches it climb); False for a policy-gradient loss around zero
"""

from __future__ import annotations


class Task:
    name: str = ""
    objective: str = "sft"
    options_section: str | None = None
    model_class: str = ""
    peft_task_type: str = ""
    pipeline_tag: str = ""
    causal_lm: bool = False
    new_head: bool = False
    data_shape: str = "labelled_text"
    metric_names: tuple[str, ...] = ("loss",)
    default_metric: str = "loss"
    headline_metrics: tuple[str, ...] = ("loss",)
    key_metric: str = "loss"
    serves: tuple[str, ...] = ()
    export_formats: tuple[str, ...] = ("hf",)
    report_sections: tuple[str, ...] = ()
    loss_falls: bool = True
    train_figures: tuple[str, ...] = ()
    train_lengths: tuple[str, ...] = ()

    # -- recipe -------------------------------------------------------------
    def options(self, recipe):
        """The task's own recipe section (a pydantic model), or None."""
        return getattr(recipe, self.options_section) if self.options_section else None

    # -- data ---------------------------------------------------------------
    def strata(self, rows, recipe) -> list | None:
        """Labels to stratify the held-out splits by, or None (a plain seeded split)."""
        return None

    def prepare(self, splits, recipe, tokenizer):
        """splits (train / validation / test rows) -> Prepared(labels, train, validation, test);
        each encoded split has `lengths`, `where` and `__len__`, and `collate` reads it."""
        raise NotImplementedError

    def encode_rows(self, rows, recipe, tokenizer, labels=None):
        """Rows of a file -> one encoded split (as `prepare` makes them)."""
        raise NotImplementedError

    def audit_options(self, recipe) -> dict:
        """Keyword arguments for the data audit besides the columns (e.g. the system prompt)."""
        return {}

    # -- model --------------------------------------------------------------
    def load_model(self, path: str, recipe, tokenizer, labels=None):
        raise NotImplementedError

    def load_trained(self, folder: str, trust_remote_code: bool = False):
        import transformers

        return getattr(transformers, self.model_class).from_pretrained(folder, trust_remote_code=trust_remote_code)

    # -- training -----------------------------------------------------------
    def collate(self, data, idx: list[int], pad_id: int) -> dict:
        raise NotImplementedError

    def packs(self, model) -> bool:
        """Whether `collate_packed` can lay rows end to end for this model (memory.packing)."""
        return False

    def collate_packed(self, data, bins: list[list[int]], pad_id: int) -> dict:
        """A batch of packed sequences, each the rows of one bin end to end (tasks that pack)."""
        raise NotImplementedError

    def loss_items(self, batch: dict) -> int:
        """How many terms the mean loss of `batch` averages (pieces of a batch are weighted by it)."""
        raise NotImplementedError

    def loss(self, model, batch: dict):
        raise NotImplementedError

    def before_training(self, trainer) -> None:
        """Called once by the loop before its first step (a resumed run too, before the checkpoint
        is loaded, so the model is still the untuned one), with the model on its device: e.g.
        reference log-probs of a preference objective. `trainer.run_model(fn)` runs fn(model)."""

    def train_stats(self) -> dict:
        """Figures of the steps since the last call, averaged, for the training log line and
        metrics.jsonl (e.g. a reward objective's mean reward); {} for none."""
        return {}

    # -- evaluation -----------------------------------------------------------
    def evaluate(self, model, data, labels, pad_id: int, batch_size: int, device) -> dict:
        """Quick validation metrics (named in metric_names) during training."""
        raise NotImplementedError

    def run_info(self, recipe, prepared) -> dict:
        """Task entries of the run's tuneline.json (labels, options...), read back by load_run."""
        opts = self.options(recipe)
        return {self.options_section: opts.model_dump(mode="json")} if opts is not None else {}

    def evaluate_test(self, model, tokenizer, data, recipe, info: dict, device) -> dict:
        """-> {"tuned": metrics, "baseline": metrics with "kind", "predictions": one dict per row}."""
        raise NotImplementedError

    def evaluation_extras(self, result: dict, preds: list[dict], data, model, tokenizer, recipe, info: dict,
                          device, base_dir) -> None:
        """Adds the task's extra findings to the eval.json object `result` (slices, counterfactuals...)."""

    def predict(self, model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8,
                options=None, system_prompt=None) -> list[dict]:
        raise NotImplementedError

    def prompt_ids(self, tokenizer, conversation: list[dict], max_length: int | None = None) -> list[int]:
        """Tasks that chat: the token ids generation starts from for `conversation` (ending with a
        user turn), at most the last `max_length`. The service's continuous batching uses it."""
        raise NotImplementedError

    def stop_ids(self, model, tokenizer) -> set[int]:
        """Tasks that chat: the token ids that end an answer."""
        raise NotImplementedError

    # -- data: token cache and replay -----------------------------------------
    def encoding_options(self, recipe) -> dict:
        """The task's own recipe values that change the encoded rows (part of the token cache's key)."""
        return {}

    def encode_general(self, rows, recipe, tokenizer):
        """causal_lm tasks: rows of general use (a train.replay file) encoded like training rows but
        without the task's own framing (e.g. its system prompt); the result's input_ids, labels and
        where are mixed into the train split, whose `with_rows(input_ids, labels, where)` appends them."""
        raise NotImplementedError

    # -- model cards ------------------------------------------------------------
    def intended_use(self, info: dict) -> str:
        """The run's model card, "Intended use": what the model does and where not to trust it
        (`info`: the run's tuneline.json)."""
        return (f"Tuned for the `{self.name}` task. Use it on data like the training data; it has not been "
                "tested on other domains or languages.")

    def card_summary(self, info: dict) -> str:
        """What the model answers, in a few words for an export's card ("labels: a, b"); "" for none."""
        return ""

    # -- service: drift and retraining (serve/) ----------------------------------
    def input_texts(self, rows, recipe) -> tuple[list[str], list[str] | None]:
        """Per row, the text a request to the service carries (a chat's last user turn), and the
        rows' labels where the task has classes, else None: the reference drift compares with."""
        raise NotImplementedError

    def plain_rows(self, rows, recipe) -> list[dict]:
        """Rows in the task's plain form, the one `plain_data_keys` reads (retrain writes it)."""
        raise NotImplementedError

    def plain_data_keys(self) -> dict:
        """The recipe's `data:` keys that read plain rows."""
        return {}

    def plain_input(self, record: dict) -> str:
        """A plain row's input as one string: a correction replaces the rows with the same input."""
        raise NotImplementedError

    def correction(self, feedback: dict) -> str | None:
        """The corrected target this task learns from in a feedback row (its `corrected_label`,
        `corrected_answer`...), or None."""
        return None

    def feedback_record(self, conversation: list[dict], fix: str) -> dict:
        """A correction as a plain row: the request's conversation (ending with the user turn)
        answered by `fix`."""
        raise NotImplementedError

    def examples(self, rows, recipe) -> list:
        """Chat tasks: rows as what they teach (data.preference.Example: a prompt with a preferred
        and / or a dispreferred answer), read as this task's training reads them; retraining mixes
        them with the service's feedback."""
        raise NotImplementedError

    def row_scores(self, run, rows: list[dict]) -> list[float]:
        """Per plain row, how right a loaded run is from 0 to 1, by `key_metric` (retrain's sign test)."""
        raise NotImplementedError

    def verdict_metrics(self, recipe, data) -> list[str]:
        """The test metrics the verdict (tuned vs baseline) rests on: the recipe's `eval.headline`,
        else the task's choice for this test data (`data`: the encoded test split)."""
        return list(recipe.eval.headline or [self.key_metric])

    def max_eval_rows(self, recipe) -> int | None:
        """How many test rows an evaluation scores (generation is slow), None for all."""
        return None
