"""transformers' ``Trainer``, taught what CRS training reads: answer-only loss, option accuracy.

``CRSTrainer`` keeps everything of ``Trainer`` (optimizer, schedule, gradient accumulation,
mixed precision, DeepSpeed / FSDP, ``accelerate launch`` / ``torchrun``, checkpoints and their
resumption, ``report_to``) and changes only what the CRS batches need:

- the batch's ``CRS_KEYS`` are taken out before the forward pass;
- the loss is ``answer_loss`` (``compute_loss_func``), on the kept answer columns only;
- training logs carry ``accuracy``, the share of rows whose most probable option letter is
  the answer, since the last log;
- evaluation predicts, per row, the chosen option, so ``option_accuracy`` scores it as
  ``QwenVL.select`` would answer (``eval_accuracy``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from tools.errors import UserInputError
from tools.files import write_atomically

from .collate import ANSWER_OPTIONS, OPTION_IDS, answer_loss, chosen_options
from .history import read_log


class CRSTrainer(Trainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, compute_loss_func=answer_loss, compute_metrics=option_accuracy, **kwargs)
        self._hits = self._rows = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        option_ids, answers = inputs.pop(OPTION_IDS), inputs.pop(ANSWER_OPTIONS)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            chosen = chosen_options(outputs.logits.detach(), option_ids)
            self._hits += sum(int(c == a) for c, a in zip(chosen, answers))
            self._rows += len(answers)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        option_ids, answers = inputs.pop(OPTION_IDS), inputs.pop(ANSWER_OPTIONS)
        labels = inputs.pop("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
            loss = answer_loss(outputs, labels).detach()
        if prediction_loss_only:
            return loss, None, None
        device = labels.device
        chosen = torch.tensor(chosen_options(outputs.logits, option_ids), device=device)
        return loss, chosen, torch.tensor(answers, device=device)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training log, reached by every process at once
            seen = torch.tensor([self._hits, self._rows], dtype=torch.float64, device=self.args.device)
            hits, rows = self.accelerator.reduce(seen, reduction="sum").tolist()
            if rows:
                logs["accuracy"] = hits / rows
            self._hits = self._rows = 0
        super().log(logs, *args, **kwargs)


def option_accuracy(prediction) -> dict[str, float]:
    """Share of evaluation rows whose chosen option is the answer."""
    return {"accuracy": float(np.mean(np.asarray(prediction.predictions) == np.asarray(prediction.label_ids)))}


class FiniteLossGuard(TrainerCallback):
    """Stops training at the first logged loss or gradient norm that is not a finite number: a
    one-line error naming the step (exit 2). Every step is logged, and a step's log comes before
    its checkpoint, so no checkpoint or adapter of NaN weights is saved. Needs
    ``logging_nan_inf_filter=False`` (Trainer otherwise logs a NaN loss as the mean of the others)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for name in ("loss", "grad_norm"):
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                raise UserInputError(f"the training {name.replace('_', ' ')} became {value} at step "
                                     f"{state.global_step}: lower --lr (or check the data); no adapter was saved")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # Weights can turn NaN while the loss that led there was finite: checked before a checkpoint.
        if control.should_save and model is not None:
            check_finite_weights(model, state.global_step)


def check_finite_weights(model, step: int) -> None:
    """Refuse to save an adapter or checkpoint whose trained weights hold NaN or infinite values."""
    bad = [name for name, weights in model.named_parameters() if weights.requires_grad and not torch.isfinite(
        weights).all()]
    if bad:
        raise UserInputError(f"after step {step}, {len(bad)} trained tensors hold NaN or infinite values ({bad[0]}): "
                             "lower --lr; no adapter or checkpoint of them was saved")


class LogFileCallback(TrainerCallback):
    """Appends every log (training step or evaluation) to a JSON Lines file, with its step.

    A run resumed from step ``resume_step`` first drops the records of later steps: those
    steps happened after the checkpoint and are about to be trained again.
    """

    def __init__(self, path: Path, *, resume_step: int | None = None) -> None:
        self.path = path
        self.resume_step = resume_step

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            kept = [] if self.resume_step is None else [r for r in read_log(self.path) if r["step"] <= self.resume_step]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as log:
                log.write(json.dumps({"step": state.global_step, **logs}) + "\n")
