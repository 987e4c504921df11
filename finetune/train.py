"""LoRA instruction tuning of a Qwen VL or InternVL checkpoint for Candidate Region Selection, on ``Trainer``.

Only the language model learns: LoRA adapters on its attention and MLP projections, the
vision tower and every base weight frozen. The loss covers the answer tokens alone (the
option letter and the end-of-turn token), and accuracy is read as at inference: argmax
over the option letters' next-token probabilities at the answer position (``trainer.py``).

Runs as one CPU/GPU process (``python -m finetune.cli ...``) or on several GPUs with
``accelerate launch -m finetune.cli ...`` / ``torchrun -m finetune.cli ...``, with
DeepSpeed (``deepspeed``) or FSDP (``fsdp``) as ``Trainer`` runs them. Layout of ``output_dir``::

    adapter/                the trained LoRA adapter (QwenVL.from_pretrained(..., adapter=...))
    checkpoints/checkpoint-<step>/   Trainer's resumable checkpoints (adapter, optimizer, RNG, state)
    merged/                 with merge: the full model with the adapter merged, plus processor
    log.jsonl, loss.png, train_config.json, summary.json
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tools.checkpoints import resolve_checkpoint
from tools.errors import UserInputError
from tools.files import read_settings_file, write_atomically

from .train_settings import (ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG_FILE, LATEST, LOG_FILE,
                             MERGED_DIR, PLOT_FILE, REGEX_TARGET_PREFIX, SUMMARY_FILE, TrainConfig,
                             check_config, check_trainer_options)

# With save_every=0 no step is a multiple of this; Trainer's steps strategy still saves at the end.
_END_ONLY = 2**31


def lora_target_regex(target: str) -> str:
    """The PEFT ``target_modules`` regex for ``--lora-target``.

    Comma-separated names match those projections *of the language model only*. In
    transformers 5 the decoders of Qwen2-VL, Qwen2.5-VL and Qwen3-VL all live at
    ``model.language_model.layers.<i>.{self_attn,mlp}.<name>``, while the vision towers use
    ``qkv``/``proj``/``fc1``/``fc2`` (Qwen2-VL), ``gate_proj``/``up_proj``/``down_proj``
    (Qwen2.5-VL: a bare name list would adapt them too) or ``linear_fc1/2`` (Qwen3-VL).
    ``re:<regex>`` is passed through; PEFT full-matches it against module names.
    """
    if target.startswith(REGEX_TARGET_PREFIX):
        pattern = target[len(REGEX_TARGET_PREFIX):]
        try:
            re.compile(pattern)
        except re.error as error:
            raise UserInputError(f"--lora-target {target!r}: invalid regex ({error})") from None
        return pattern
    names = [name.strip() for name in target.split(",") if name.strip()]
    if not names or not all(name.isidentifier() for name in names):
        raise UserInputError(f"--lora-target {target!r}: give module names like q_proj,v_proj or re:<regex>")
    return rf"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{'|'.join(names)})"


def train(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune as ``config`` says; returns the summary written to ``summary.json`` (on the main
    process; the others, under ``accelerate launch`` or ``torchrun``, return an empty dict)."""
    from .samples import check_images, read_training_samples

    # Every mistake in the settings and files is answered before torch is imported.
    check_config(config)
    started = time.perf_counter()
    output = Path(config.output_dir)
    checkpoints_dir = output / CHECKPOINTS_DIR
    resume_from = find_checkpoint(config.resume, checkpoints_dir) if config.resume else None
    if resume_from is not None:
        _check_resumable(resume_from, config)
    elif not config.force and _holds_a_run(output):
        raise UserInputError(f"{output} holds another fine-tuning run (its checkpoints or adapter would be replaced): "
                             "continue it with --resume latest, or start over in it with --force")
    train_samples = read_training_samples(config.train_file)
    eval_samples = read_training_samples(config.eval_file) if config.eval_file else []
    check_images(train_samples, config.train_file)
    check_images(eval_samples, config.eval_file or "")

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from transformers import set_seed

    from tools.devices import resolve_dtype
    from tools.mllm.families import family_for_model

    from .collate import CRSCollator
    from .trainer import CRSTrainer, FiniteLossGuard, LogFileCallback

    # "auto" depends on the device; the first PartialState must see `accelerate launch --cpu`.
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    weights_dtype = resolve_dtype(config.dtype, device)
    check_trainer_options(config)
    set_seed(config.seed)  # the LoRA weights' initialisation
    model, processor = _lora_model(config, weights_dtype)
    collator = CRSCollator(processor, min_pixels=config.min_pixels, max_pixels=config.max_pixels,
                           max_patches=config.max_patches, prompts_dir=config.prompts_dir, family=family_for_model(model.config.model_type))
    resume_step = _checkpoint_step(resume_from) if resume_from else None
    trainer = CRSTrainer(
        model=model, args=training_arguments(config, weights_dtype, has_eval=bool(eval_samples)),
        train_dataset=train_samples, eval_dataset=eval_samples or None, data_collator=collator,
        callbacks=[LogFileCallback(output / LOG_FILE, resume_step=resume_step), FiniteLossGuard()],
    )
    if trainer.is_world_process_zero():
        output.mkdir(parents=True, exist_ok=True)
        write_atomically(output / CONFIG_FILE, json.dumps(asdict(config), indent=2))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    step = trainer.state.global_step
    evaluated = any("eval_accuracy" in r and r.get("step") == step for r in trainer.state.log_history)
    if eval_samples and not evaluated:  # the run ended mid-epoch: evaluate where it stopped
        trainer.evaluate()
    return _finish(config, trainer, processor, output, start_step=resume_step or 0,
                   seconds=time.perf_counter() - started, sizes=(len(train_samples), len(eval_samples)))


def training_arguments(config: TrainConfig, weights_dtype, *, has_eval: bool):
    """``TrainingArguments`` for ``config``: the flags of ``agent-cli finetune`` in Trainer's names."""
    import torch
    from transformers import TrainingArguments

    arguments = dict(
        output_dir=str(Path(config.output_dir) / CHECKPOINTS_DIR),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size or config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        bf16=weights_dtype == torch.bfloat16,
        fp16=weights_dtype == torch.float16,
        eval_strategy="epoch" if has_eval else "no",
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss must reach FiniteLossGuard as NaN
        save_strategy="steps",
        save_steps=config.save_every or _END_ONLY,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # the collator reads CRSSample objects, not columns
        label_names=["labels"],
        report_to=config.reporters,
        deepspeed=config.deepspeed,
        fsdp=config.fsdp or "",
    )
    # transformers 5 renamed these: warmup_steps below 1 is a ratio, activation_checkpointing.
    known = TrainingArguments.__dataclass_fields__
    arguments["warmup_ratio" if "warmup_ratio" in known else "warmup_steps"] = config.warmup_ratio
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    if config.gradient_checkpointing:
        arguments[checkpointing] = True
        # Non-reentrant checkpointing gets gradients to the adapters although the inputs need none.
        arguments[checkpointing + "_kwargs"] = {"use_reentrant": False}
    return TrainingArguments(**arguments)


def find_checkpoint(resume: str, folder: Path) -> Path:
    """The checkpoint ``resume`` names: a folder, or ``latest`` (the highest step in ``folder``)."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume == LATEST:
        found = get_last_checkpoint(str(folder)) if folder.is_dir() else None
        if found is None:
            raise UserInputError(f"--resume latest: no checkpoint in {folder}")
        return Path(found)
    checkpoint = Path(resume)
    if not (checkpoint / "trainer_state.json").is_file():
        raise UserInputError(f"--resume {resume!r}: not a checkpoint folder (no trainer_state.json)")
    return checkpoint


def _trainer_state(checkpoint: Path) -> dict[str, Any]:
    state = read_settings_file(checkpoint / "trainer_state.json", "a Trainer checkpoint's state")
    if not isinstance(state.get("global_step"), int) or isinstance(state.get("global_step"), bool):
        raise UserInputError(f"{checkpoint / 'trainer_state.json'}: no global_step; not a Trainer checkpoint")
    return state


def _checkpoint_step(checkpoint: Path) -> int:
    return _trainer_state(checkpoint)["global_step"]


def _check_resumable(checkpoint: Path, config: TrainConfig) -> None:
    """Refuse to resume with another batch size: the samples already seen would change."""
    state = _trainer_state(checkpoint)
    if state.get("train_batch_size") not in (None, config.batch_size):
        raise UserInputError(f"{checkpoint} was trained with batch size {state['train_batch_size']}, not "
                             f"{config.batch_size}: the data order would change; resume with the same settings")


def _finish(config, trainer, processor, output: Path, *, start_step, seconds, sizes) -> dict[str, Any]:
    """Save the adapter (and merged model), plot the log, write and return the summary."""
    from .history import plot_history, read_log

    from .trainer import check_finite_weights

    step = trainer.state.global_step
    check_finite_weights(trainer.model, step)
    trainer.save_model(str(output / ADAPTER_DIR))  # every process: DeepSpeed and FSDP gather the weights
    summary: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        records = read_log(output / LOG_FILE)
        train_records = [r for r in records if "loss" in r]
        eval_records = [r for r in records if "eval_accuracy" in r]
        plot = plot_history(records, output / PLOT_FILE)
        if config.merge:
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(output / MERGED_DIR)
            processor.save_pretrained(output / MERGED_DIR)
        summary = {
            "start_step": start_step,
            "steps": step,
            "steps_run": step - start_step,
            "train_samples": sizes[0],
            "eval_samples": sizes[1],
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "first_loss": train_records[0]["loss"] if train_records else None,
            "last_loss": train_records[-1]["loss"] if train_records else None,
            "eval_accuracy": eval_records[-1]["eval_accuracy"] if eval_records else None,
            "eval_history": eval_records,
            "adapter_dir": str(output / ADAPTER_DIR),
            "merged_dir": str(output / MERGED_DIR) if config.merge else None,
            "log_file": str(output / LOG_FILE),
            "plot_file": str(plot) if plot else None,
            "seconds": round(seconds, 2),
        }
        write_atomically(output / SUMMARY_FILE, json.dumps(summary, indent=2))
    trainer.accelerator.wait_for_everyone()
    return summary


def _lora_model(config: TrainConfig, weights_dtype):
    """The base checkpoint with LoRA on its language model, and its processor."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from tools.mllm.families import family_for_model

    path = resolve_checkpoint(config.model)
    family_for_model(AutoConfig.from_pretrained(path).model_type)  # only supported families: fail early
    processor = AutoProcessor.from_pretrained(path)
    load = {"dtype": weights_dtype}
    if config.attn_implementation:
        load["attn_implementation"] = config.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **load)
    model.config.use_cache = False  # no KV cache when training
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or 2 * config.lora_rank,
                      lora_dropout=config.lora_dropout, target_modules=lora_target_regex(config.lora_target),
                      task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as error:  # PEFT: no module matched
        raise UserInputError(f"--lora-target {config.lora_target!r} matches no module of {config.model}: "
                             f"{error}") from None
    return model, processor


def _holds_a_run(output: Path) -> bool:
    """Whether ``output`` already holds what a run writes (checkpoints, an adapter, a summary)."""
    checkpoints = output / CHECKPOINTS_DIR
    return ((checkpoints.is_dir() and any(checkpoints.iterdir())) or (output / ADAPTER_DIR).exists()
            or (output / SUMMARY_FILE).exists())
