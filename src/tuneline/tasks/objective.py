"""What the objectives other than sft share, as mixins put before GenerateTask in their bases:
their options section, rows read into memory, no replay, and the reference model's plumbing."""

from __future__ import annotations

import copy

import torch

from ..data.streaming import StreamedRows
from ..errors import UserError
from .logprobs import as_reference, is_adapter_model, sequence_logps, split_logps


class ObjectiveParts:
    """An objective's recipe section (named after it) and its rules for data."""

    objective: str
    _opts = None

    def packs(self, model) -> bool:
        return False  # their batches hold pairs or groups whose sequences are compared side by side

    def objective_options(self, recipe):
        """The objective's recipe section, remembered for the loss: every path that encodes rows,
        trains or evaluates passes through here with the run's recipe first."""
        self._opts = getattr(recipe, self.objective)
        return self._opts

    def in_memory(self, splits) -> None:
        if isinstance(splits.train, StreamedRows):
            raise UserError(f"data.streaming: objective {self.objective} reads its rows into memory; "
                            "set data.streaming: false")

    def encode_general(self, rows, recipe, tokenizer):
        raise UserError(f"train.replay mixes general chat rows into supervised training; objective "
                        f"{self.objective} learns from other rows: remove train.replay")

    def run_info(self, recipe, prepared) -> dict:
        """The generate options (load_run answers with them) and the objective's own."""
        opts = self.objective_options(recipe)
        return {"generate": recipe.generate.model_dump(mode="json"), self.objective: opts.model_dump(mode="json")}


class ReferenceParts:
    """The reference model (the untuned one) of an objective whose collate makes two sequences per
    row: its summed answer log-probs precomputed once (`<objective>.precompute_reference`), or each
    step through the base with the adapter off, or through a frozen copy under full tuning."""

    uses_reference = True
    frozen = None

    def before_training(self, trainer) -> None:
        """Called by the loop before a checkpoint is loaded: the model is still the untuned one."""
        opts = self.objective_options(trainer.recipe)
        if not self.uses_reference:
            return
        if opts.precompute_reference:
            for data in (trainer.train_data, trainer.val_data):
                data.reference = None
                data.reference = trainer.run_model(lambda m, d=data: self._reference_pass(m, d, trainer))
            print(f"Reference log-probs computed for {len(trainer.train_data)} + {len(trainer.val_data)} rows.",
                  flush=True)
        elif not is_adapter_model(trainer.model):
            if trainer.sharded:
                raise UserError(f"{self.objective}.precompute_reference: false needs a frozen copy of the model, "
                                "which a sharded run does not keep; set it to true")
            self.frozen = copy.deepcopy(trainer.model).eval().requires_grad_(False)

    def _reference_pass(self, model, data, trainer) -> torch.Tensor:
        # at the run's precision, as the policy's log-probs are computed in its steps
        with as_reference(model) as ref, trainer.acc.autocast():
            return split_logps(ref, data, self.collate, trainer.pad_id, trainer.eval_batch, trainer.acc.device)

    def reference_sums(self, model, batch: dict) -> torch.Tensor | None:
        """The reference's summed answer log-probs of a training batch's sequences."""
        if not self.uses_reference:
            return None
        if "reference" in batch:
            return batch["reference"]
        plain = {k: v for k, v in batch.items() if k != "reference"}
        with as_reference(self.frozen if self.frozen is not None else model) as ref:
            return sequence_logps(ref, plain)[0].detach()

    def reference_split(self, model, data, pad_id: int, batch_size: int, device) -> torch.Tensor | None:
        """[rows, 2] reference sums of an evaluation split: precomputed, or computed now."""
        if data.reference is not None or not self.uses_reference:
            return data.reference
        with as_reference(self.frozen if self.frozen is not None else model) as ref:
            return split_logps(ref, data, self.collate, pad_id, batch_size, device)
