"""LoRA instruction tuning of a Qwen VL checkpoint for Candidate Region Selection.

Only the language model learns: LoRA adapters on its attention and MLP projections, the
vision tower and every base weight frozen. The loss covers the answer tokens alone (the
option letter and the end-of-turn token), and accuracy is read as at inference: argmax
over the option letters' next-token probabilities at the answer position.

Runs as one CPU/GPU process (``python -m finetune.train ...``) or on several GPUs with
``accelerate launch -m finetune.train ...``. Layout of ``output_dir``::

    adapter/                the trained LoRA adapter (QwenVL.from_pretrained(..., adapter=...))
    checkpoints/checkpoint-<step>/   resumable state, see checkpoints.py
    merged/                 with merge: the full model with the adapter merged, plus processor
    log.jsonl, loss.png, train_config.json, summary.json
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from prompts import check_prompts_dir
from tools.files import check_output_folder, write_atomically
from tools.checkpoints import resolve_checkpoint
from tools.devices import resolve_dtype
from tools.errors import UserInputError
from tools.mllm.families import family_for_model

from .checkpoints import find_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .collate import CRSCollator, answer_logits, answer_loss_sum, option_hits
from .history import TrainingLog, plot_history, read_log
from .samples import CRSSample, read_samples

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LORA_TARGET = ",".join(LLM_PROJECTIONS)
REGEX_TARGET_PREFIX = "re:"
SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "constant")
LOG_FILE = "log.jsonl"
_MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class TrainConfig:
    """Every setting of a fine-tuning run; ``agent-cli finetune`` exposes each as an option."""

    model: str  # Qwen VL checkpoint: Hub id or folder
    train_file: str  # CRS samples, JSONL (finetune/samples.py)
    output_dir: str
    eval_file: str | None = None  # held-out CRS samples: option accuracy after every epoch
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 4  # samples per micro-batch and process
    eval_batch_size: int | None = None  # default: batch_size
    grad_accum: int = 4  # micro-batches per optimizer step
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03  # share of all steps spent warming the learning rate up
    max_grad_norm: float = 1.0  # 0 disables clipping
    lora_rank: int = 8
    lora_alpha: float | None = None  # default: 2 * rank
    lora_dropout: float = 0.05
    lora_target: str = DEFAULT_LORA_TARGET  # module names (LLM only) or "re:<regex>"
    dtype: str = "auto"  # base weights: auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2
    min_pixels: int | None = None  # image budget; default: the processor's, as at inference
    max_pixels: int | None = None
    save_every: int = 500  # checkpoint every N optimizer steps (and at the end); 0: end only
    save_total_limit: int | None = 2  # checkpoints kept; None keeps all
    resume: str | None = None  # a checkpoint folder, or "latest" under output_dir/checkpoints
    seed: int = 0
    num_workers: int = 0  # DataLoader workers that load and tokenise batches
    merge: bool = False  # also save the merged model and processor
    prompts_dir: str | None = None


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


def epoch_micro_batches(num_samples: int, epoch: int, *, seed: int, batch_size: int, process_index: int = 0,
                        num_processes: int = 1) -> list[list[int]]:
    """Sample indices of this process's micro-batches in ``epoch``, a pure function of its arguments.

    The shuffle is seeded by ``seed + epoch``; every process gets the same number of samples
    (wrapping around), so all of them take the same number of optimizer steps.
    """
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_process = math.ceil(num_samples / num_processes)
    order = [order[i % num_samples] for i in range(per_process * num_processes)]
    shard = order[process_index::num_processes]
    return [shard[start:start + batch_size] for start in range(0, len(shard), batch_size)]


def evaluate(model, samples: Sequence[CRSSample], collator: CRSCollator, *, batch_size: int,
             accelerator=None) -> dict[str, float]:
    """Option accuracy and mean answer-token loss of ``model`` on ``samples``.

    One forward pass per batch, no generation. With an ``accelerator`` the samples are
    split over its processes and the counts summed.
    """
    index, processes = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    mine = list(samples)[index::processes]
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # hits, rows, loss sum, tokens
    was_training = model.training
    model.eval()
    autocast = accelerator.autocast() if accelerator else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, len(mine), batch_size):
            batch = collator(mine[start:start + batch_size]).to(device)
            logits = answer_logits(model, batch)
            totals += torch.tensor([sum(option_hits(logits, batch)), len(batch),
                                    answer_loss_sum(logits, batch).item(), len(batch) * batch.answer_length],
                                   dtype=torch.float64, device=device)
    model.train(was_training)
    if accelerator:
        totals = accelerator.reduce(totals, reduction="sum")
    hits, rows, loss, tokens = totals.tolist()
    return {"accuracy": hits / max(rows, 1), "loss": loss / max(tokens, 1), "count": int(rows)}


def train(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune as ``config`` says; returns a summary (also written to ``summary.json``)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    _check_config(config)
    started = time.perf_counter()
    # "auto" depends on the device, known before the Accelerator fixes its mixed precision. The
    # first PartialState must see `accelerate launch --cpu` (ACCELERATE_USE_CPU) for multi-CPU runs.
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    weights_dtype = resolve_dtype(config.dtype, device)
    accelerator = Accelerator(mixed_precision=_MIXED_PRECISION[weights_dtype])
    set_seed(config.seed)
    output = Path(config.output_dir)
    checkpoints_dir = output / "checkpoints"
    train_samples = read_samples(config.train_file)
    eval_samples = read_samples(config.eval_file) if config.eval_file else []
    model, processor, trainable = _lora_model(config, weights_dtype)
    collator = CRSCollator(processor, min_pixels=config.min_pixels, max_pixels=config.max_pixels,
                           prompts_dir=config.prompts_dir, family=family_for_model(model.config.model_type))
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    order = dict(seed=config.seed, batch_size=config.batch_size, process_index=accelerator.process_index,
                 num_processes=accelerator.num_processes)
    steps_per_epoch = math.ceil(len(epoch_micro_batches(len(train_samples), 0, **order)) / config.grad_accum)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    # Stepped once per optimizer step by us, not by accelerate (which would step it per process).
    scheduler = get_scheduler(config.lr_scheduler, optimizer,
                              num_warmup_steps=round(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    data_order = dict(seed=config.seed, batch_size=config.batch_size, grad_accum=config.grad_accum,
                      num_processes=accelerator.num_processes, train_samples=len(train_samples))
    step = 0
    if config.resume:
        step = load_checkpoint(find_checkpoint(config.resume, checkpoints_dir), model=model, optimizer=optimizer,
                               scheduler=scheduler, accelerator=accelerator, data_order=data_order)
    start_step = step
    main = accelerator.is_main_process
    log = TrainingLog(output / LOG_FILE, resume_step=step if config.resume else None, enabled=main)
    if main:
        write_atomically(output / "train_config.json", json.dumps(asdict(config), indent=2))

    def save(at_step: int) -> None:
        save_checkpoint(checkpoints_dir, step=at_step, model=model, optimizer=optimizer, scheduler=scheduler,
                        accelerator=accelerator, data_order=data_order)
        if main:
            prune_checkpoints(checkpoints_dir, config.save_total_limit)

    def run_eval(at_step: int) -> None:
        if eval_samples:
            result = evaluate(accelerator.unwrap_model(model), eval_samples, collator, accelerator=accelerator,
                              batch_size=config.eval_batch_size or config.batch_size)
            log.write({"step": at_step, "epoch": round(at_step / steps_per_epoch, 4),
                       "eval_accuracy": result["accuracy"], "eval_loss": result["loss"]})

    model.train()
    progress = tqdm(total=total_steps, initial=step, desc="CRS fine-tuning",
                    disable=not accelerator.is_local_main_process)
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        micro_batches = epoch_micro_batches(len(train_samples), epoch, **order)
        groups = [micro_batches[i:i + config.grad_accum] for i in range(0, len(micro_batches), config.grad_accum)]
        groups = groups[done_in_epoch:done_in_epoch + total_steps - step]  # skip what was already trained
        loader = iter(torch.utils.data.DataLoader(
            train_samples, batch_sampler=[batch for group in groups for batch in group], collate_fn=collator,
            num_workers=config.num_workers))
        for group in groups:
            batches = [next(loader) for _ in group]
            loss, hits, rows = _accumulate(model, batches, accelerator)
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            totals = accelerator.reduce(torch.tensor([loss, hits, rows], device=accelerator.device), "sum")
            record = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                      "loss": totals[0].item() / accelerator.num_processes,
                      "accuracy": totals[1].item() / totals[2].item(), "lr": scheduler.get_last_lr()[0]}
            log.write(record)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.2f}")
            if step % steps_per_epoch == 0:
                run_eval(step)
            if (config.save_every and step % config.save_every == 0) or step == total_steps:
                save(step)
    progress.close()
    if step % steps_per_epoch:  # the run ended mid-epoch: evaluate where it stopped
        run_eval(step)
    return _finish(config, accelerator, model, processor, output, start_step=start_step, step=step,
                   seconds=time.perf_counter() - started, trainable=sum(p.numel() for p in trainable),
                   sizes=(len(train_samples), len(eval_samples)))


def _accumulate(model, batches, accelerator) -> tuple[float, int, int]:
    """Forward and backward over one optimizer step's micro-batches; loss, hits and rows seen.

    The loss is the mean over all answer tokens of the step, whatever the micro-batch sizes.
    """
    tokens = sum(len(batch) * batch.answer_length for batch in batches)
    loss_value, hits = 0.0, 0
    for i, batch in enumerate(batches):
        batch = batch.to(accelerator.device)
        # Gradients are all-reduced across processes only on the last micro-batch of the step.
        sync = contextlib.nullcontext() if i == len(batches) - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                logits = answer_logits(model, batch)
                loss = answer_loss_sum(logits, batch) / tokens
            accelerator.backward(loss)
        loss_value += loss.item()
        hits += sum(option_hits(logits.detach(), batch))
    return loss_value, hits, sum(len(batch) for batch in batches)


def _finish(config, accelerator, model, processor, output: Path, *, start_step, step, seconds, trainable,
            sizes) -> dict[str, Any]:
    """Save the adapter (and merged model), plot the log, write and return the summary."""
    accelerator.wait_for_everyone()
    records = read_log(output / LOG_FILE)
    train_records = [r for r in records if "loss" in r]
    eval_records = [r for r in records if "eval_accuracy" in r]
    summary = {
        "start_step": start_step,
        "steps": step,
        "steps_run": step - start_step,
        "train_samples": sizes[0],
        "eval_samples": sizes[1],
        "trainable_parameters": trainable,
        "first_loss": train_records[0]["loss"] if train_records else None,
        "last_loss": train_records[-1]["loss"] if train_records else None,
        "eval_accuracy": eval_records[-1]["eval_accuracy"] if eval_records else None,
        "eval_history": eval_records,
        "adapter_dir": str(output / "adapter"),
        "merged_dir": str(output / "merged") if config.merge else None,
        "log_file": str(output / LOG_FILE),
        "plot_file": None,
        "seconds": round(seconds, 2),
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output / "adapter")
        plot = plot_history(records, output / "loss.png")
        summary["plot_file"] = str(plot) if plot else None
        if config.merge:
            unwrapped.merge_and_unload().save_pretrained(output / "merged")
            processor.save_pretrained(output / "merged")
        write_atomically(output / "summary.json", json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary


def _lora_model(config: TrainConfig, weights_dtype: torch.dtype):
    """The base checkpoint with LoRA on its language model; returns model, processor, trainable params."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = resolve_checkpoint(config.model)
    family_for_model(AutoConfig.from_pretrained(path).model_type)  # only Qwen VL families: fail early
    processor = AutoProcessor.from_pretrained(path)
    load = {"dtype": weights_dtype}
    if config.attn_implementation:
        load["attn_implementation"] = config.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **load)
    model.config.use_cache = False  # no KV cache when training
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing gets gradients to the adapters although the inputs need none.
        # transformers 5 renamed gradient_checkpointing_enable (now deprecated) to this:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or 2 * config.lora_rank,
                      lora_dropout=config.lora_dropout, target_modules=lora_target_regex(config.lora_target),
                      task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as error:  # PEFT: no module matched
        raise UserInputError(f"--lora-target {config.lora_target!r} matches no module of {config.model}: "
                             f"{error}") from None
    return model, processor, [p for p in model.parameters() if p.requires_grad]


def _check_config(config: TrainConfig) -> None:
    positive = {"batch_size": config.batch_size, "grad_accum": config.grad_accum, "lora_rank": config.lora_rank}
    for name, value in positive.items():
        if value < 1:
            raise UserInputError(f"{name} must be at least 1, got {value}")
    if config.max_steps is not None and config.max_steps < 1:
        raise UserInputError(f"max_steps must be at least 1, got {config.max_steps}")
    if config.max_steps is None and config.epochs <= 0:
        raise UserInputError(f"epochs must be positive, got {config.epochs}")
    if config.lr_scheduler not in SCHEDULERS:
        raise UserInputError(f"lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {config.lr_scheduler!r}")
    if not 0 <= config.warmup_ratio < 1 or not 0 <= config.lora_dropout < 1:
        raise UserInputError("warmup_ratio and lora_dropout must lie in [0, 1)")
    if config.save_every < 0 or (config.save_total_limit is not None and config.save_total_limit < 1):
        raise UserInputError("save_every must be >= 0 and save_total_limit >= 1")
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise UserInputError(f"the learning rate must be a positive number, got {config.learning_rate}")
    if config.lora_alpha is not None and not (math.isfinite(config.lora_alpha) and config.lora_alpha > 0):
        raise UserInputError(f"lora_alpha must be a positive number, got {config.lora_alpha}")
    check_output_folder(config.output_dir)
    check_prompts_dir(config.prompts_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m finetune.train``: the same options as ``agent-cli finetune``."""
    from .cli import run_standalone

    return run_standalone(argv)


if __name__ == "__main__":
    raise SystemExit(main())
