"""``agent-cli finetune`` (register ``finetune`` on the app), or on its own: ``python -m finetune.cli``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


from .train import DEFAULT_LORA_TARGET, SCHEDULERS, TrainConfig


def finetune(
    model: str = typer.Option(..., "--model", help="Qwen VL checkpoint to tune: Hub id or folder."),
    train_file: Path = typer.Option(..., "--train", help="CRS training samples (JSONL, see finetune/samples.py)."),
    output_dir: Path = typer.Option(..., "--output", help="Folder for the adapter, checkpoints, log and plot."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="Held-out CRS samples: option accuracy per epoch."),
    epochs: float = typer.Option(3.0, "--epochs", help="Passes over the training samples."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Optimizer steps; overrides --epochs."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Samples per micro-batch and process."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", min=1, help="Default: --batch-size."),
    grad_accum: int = typer.Option(4, "--grad-accum", min=1, help="Micro-batches per optimizer step."),
    learning_rate: float = typer.Option(1e-4, "--lr", help="Peak learning rate."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    lr_scheduler: str = typer.Option("cosine", "--scheduler", help=f"One of: {', '.join(SCHEDULERS)}."),
    warmup_ratio: float = typer.Option(0.03, "--warmup-ratio", help="Share of the steps spent warming up."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping; 0 disables it."),
    lora_rank: int = typer.Option(8, "--lora-rank", min=1),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="Default: 2 x rank."),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    lora_target: str = typer.Option(
        DEFAULT_LORA_TARGET, "--lora-target",
        help="Comma-separated projection names, applied to the language model only, or re:<regex> on module names."),
    dtype: str = typer.Option("auto", "--dtype", help="Weights: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
    attn_implementation: Optional[str] = typer.Option(None, "--attn", help="e.g. sdpa or flash_attention_2."),
    min_pixels: Optional[int] = typer.Option(None, "--min-pixels", help="Image budget; default: the processor's."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Use the same budget as at inference."),
    max_patches: Optional[int] = typer.Option(
        None, "--max-patches", min=1, help="InternVL: most tiles per image; use the same as at inference."),
    save_every: int = typer.Option(500, "--save-every", min=0, help="Checkpoint every N steps (0: at the end only)."),
    save_total_limit: Optional[int] = typer.Option(2, "--save-total-limit", min=1, help="Checkpoints kept."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="A checkpoint folder (checkpoint-N), or 'latest' in --output."),
    force: bool = typer.Option(
        False, "--force", help="Start over in an --output that holds another run (its checkpoints are replaced)."),
    deepspeed: Optional[Path] = typer.Option(None, "--deepspeed", help="DeepSpeed config file (JSON), as Trainer takes."),
    fsdp: Optional[str] = typer.Option(None, "--fsdp", help="Trainer's FSDP options, e.g. 'full_shard auto_wrap'."),
    report_to: str = typer.Option(
        "none", "--report-to", help="Where Trainer also logs: tensorboard, wandb, mlflow, ... (comma-separated), all."),
    seed: int = typer.Option(0, "--seed"),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader workers preparing batches."),
    merge: bool = typer.Option(False, "--merge", help="Also save the merged model and processor."),
    prompts_dir: Optional[str] = typer.Option(None, "--prompts-dir", help="Your own prompt templates."),
) -> None:
    """Instruction-tune a Qwen VL or InternVL model for Candidate Region Selection with LoRA (choice or verify samples)."""
    from .train import train

    config = TrainConfig(
        model=model, train_file=str(train_file), output_dir=str(output_dir),
        eval_file=str(eval_file) if eval_file else None, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, eval_batch_size=eval_batch_size, grad_accum=grad_accum,
        learning_rate=learning_rate, weight_decay=weight_decay, lr_scheduler=lr_scheduler,
        warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, lora_target=lora_target, dtype=dtype,
        gradient_checkpointing=gradient_checkpointing, attn_implementation=attn_implementation,
        min_pixels=min_pixels, max_pixels=max_pixels, max_patches=max_patches, save_every=save_every, save_total_limit=save_total_limit,
        resume=resume, force=force, seed=seed, num_workers=num_workers, merge=merge, prompts_dir=prompts_dir,
        deepspeed=str(deepspeed) if deepspeed else None, fsdp=fsdp, report_to=report_to,
    )
    summary = train(config)
    if not summary:  # under `accelerate launch` only the main process reports
        return
    brief = {key: summary[key] for key in ("steps", "steps_run", "first_loss", "last_loss", "eval_accuracy",
                                           "adapter_dir", "seconds")}
    typer.echo(json.dumps(brief, indent=2))


if __name__ == "__main__":  # python -m finetune.cli ... / accelerate launch -m finetune.cli ...
    from tools.cli_runner import run_command

    raise SystemExit(run_command(finetune, None, "finetune"))
