"""What a fine-tuning run depends on (``TrainConfig``, each field an option of ``agent-cli finetune``
with its help), the files of its output folder, and the checks its settings pass before any model
loads (``check_config``; ``check_trainer_options`` against the installed transformers)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from prompts import check_prompts_dir
from tools.errors import UserInputError
from tools.files import TRAIN_MARKER, check_output_folder, check_outputs, foreign_runs
from tools.images import check_pixel_budget
from tools.settings import setting

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LORA_TARGET = ",".join(LLM_PROJECTIONS)
REGEX_TARGET_PREFIX = "re:"
SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "constant")
MAX_LORA_RANK = 1024  # beyond any projection's width worth adapting; a typo would allocate gigabytes
LOG_FILE = "log.jsonl"
CONFIG_FILE = TRAIN_MARKER
SUMMARY_FILE = "summary.json"
PLOT_FILE = "loss.png"
ADAPTER_DIR, MERGED_DIR = "adapter", "merged"
MAX_WORKERS = 64  # DataLoader processes: more than any machine has cores for
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"

@dataclass
class TrainConfig:
    """Every setting of a fine-tuning run, each an option of ``agent-cli finetune`` with its help."""

    model: str = setting(help="Qwen VL or InternVL (-hf) checkpoint to tune: Hub id or folder.")
    train_file: str = setting(help="CRS training samples, JSONL: multiple-choice (finetune/samples.py) or yes/no "
                                   "(verify_samples.py).", flag="--train", path=True)
    output_dir: str = setting(help="Folder for the adapter, checkpoints, log and plot.", flag="--output", path=True)
    eval_file: str | None = setting(None, "Held-out CRS samples: option accuracy after every epoch.", flag="--eval",
                                    path=True)
    epochs: float = setting(3.0, "Passes over the training samples.")
    max_steps: int | None = setting(None, "Optimizer steps; overrides --epochs.", minimum=1)
    batch_size: int = setting(4, "Samples per micro-batch and process.", minimum=1)
    eval_batch_size: int | None = setting(None, "Default: --batch-size.", minimum=1)
    grad_accum: int = setting(4, "Micro-batches per optimizer step.", minimum=1)
    learning_rate: float = setting(1e-4, "Peak learning rate.", flag="--lr")
    weight_decay: float = setting(0.0, "Weight decay of AdamW.")
    lr_scheduler: str = setting("cosine", f"One of: {', '.join(SCHEDULERS)}.", flag="--scheduler")
    warmup_ratio: float = setting(0.03, "Share of the steps spent warming the learning rate up.")
    max_grad_norm: float = setting(1.0, "Gradient clipping; 0 disables it.")
    lora_rank: int = setting(8, f"LoRA rank (at most {MAX_LORA_RANK}).", minimum=1)
    lora_alpha: float | None = setting(None, "Default: 2 x rank.")
    lora_dropout: float = setting(0.05, "Dropout on the LoRA inputs.")
    lora_target: str = setting(DEFAULT_LORA_TARGET, "Comma-separated projection names, applied to the language "
                                                    "model only, or re:<regex> on module names.")
    dtype: str = setting("auto", "Weights: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16.")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory.", negatable=False)
    attn_implementation: str | None = setting(None, "e.g. sdpa or flash_attention_2.", flag="--attn")
    min_pixels: int | None = setting(None, "Image budget; default: the processor's, as at inference.")
    max_pixels: int | None = setting(None, "Use the same budget as at inference.")
    max_patches: int | None = setting(None, "InternVL: most tiles per image; use the same as at inference.",
                                      minimum=1)
    save_every: int = setting(500, "Checkpoint every N optimizer steps (0: at the end only).", minimum=0)
    save_total_limit: int | None = setting(2, "Checkpoints kept.", minimum=1)
    resume: str | None = setting(None, "A checkpoint folder (checkpoint-N), or 'latest' in --output.")
    force: bool = setting(False, "Start over in an --output that holds another run (its checkpoints are replaced).",
                          negatable=False)
    deepspeed: str | None = setting(None, "DeepSpeed config file (JSON), as Trainer takes.", path=True)
    fsdp: str | None = setting(None, "Trainer's FSDP options, e.g. 'full_shard auto_wrap'.")
    report_to: str = setting("none", "Where Trainer also logs: tensorboard, wandb, mlflow, ... (comma-separated), "
                                     "all.")
    seed: int = setting(0, "Seeds the LoRA initialisation and the data order.")
    num_workers: int = setting(0, "DataLoader workers preparing batches.", minimum=0)
    merge: bool = setting(False, "Also save the merged model and processor.", negatable=False)
    prompts_dir: str | None = setting(None, "Your own prompt templates.")

    @property
    def reporters(self) -> list[str]:
        """``report_to`` as Trainer takes it: the integrations named, none for "none"."""
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        return [] if names == ["none"] else names


def check_trainer_options(config: TrainConfig) -> None:
    """``--attn``, ``--fsdp``, ``--report-to`` and ``--deepspeed`` against what the installed
    transformers offers and what is installed, before any model loads."""
    import importlib.util

    import transformers.utils
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.trainer_utils import FSDPOption

    attention = config.attn_implementation
    known = ("eager", *ALL_ATTENTION_FUNCTIONS.keys())
    if attention and "/" not in attention and attention not in known:  # "org/repo": a Hub kernel
        raise UserInputError(f"--attn {attention!r}: not one of {', '.join(known)}")
    flash = re.fullmatch(r"flash_attention_(\d)", attention or "")
    available = flash and getattr(transformers.utils, f"is_flash_attn_{flash.group(1)}_available", None)
    if available is not None and flash and not available():
        raise UserInputError(f"--attn {attention}: its package is not installed (or needs a CUDA GPU); use sdpa")
    unknown = sorted(set((config.fsdp or "").split()) - {option.value for option in FSDPOption})
    if unknown:
        raise UserInputError(f"--fsdp {config.fsdp!r}: unknown {', '.join(unknown)}; Trainer's options are "
                             f"{', '.join(option.value for option in FSDPOption)}")
    for name in config.reporters if config.reporters != ["all"] else []:
        if name not in INTEGRATION_TO_CALLBACK:
            raise UserInputError(f"--report-to {name!r}: not one of none, all, {', '.join(INTEGRATION_TO_CALLBACK)}")
        if name not in get_available_reporting_integrations():
            raise UserInputError(f"--report-to {name}: its package is not installed")
    if config.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise UserInputError("--deepspeed needs the deepspeed package: pip install deepspeed")


def check_config(config: TrainConfig) -> None:
    for item in fields(config):  # nan passes every comparison below: refused first, by name
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserInputError(f"{item.name} must be a finite number, got {value}")
    check_pixel_budget(config.min_pixels, config.max_pixels, config.max_patches)
    if not 0 <= config.seed < 2**32:
        raise UserInputError(f"seed must lie in [0, 2**32), got {config.seed}")
    if config.lora_rank > MAX_LORA_RANK:
        raise UserInputError(f"lora_rank {config.lora_rank} is over {MAX_LORA_RANK}: LoRA's point is a small rank "
                             "(the default is 8)")
    if config.weight_decay < 0 or config.max_grad_norm < 0:
        raise UserInputError("weight_decay and max_grad_norm must be at least 0")
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
    if config.merge and (config.deepspeed or config.fsdp):
        raise UserInputError("--merge needs the whole model in one process: merge the adapter after a "
                             "DeepSpeed or FSDP run (QwenVL.from_pretrained(..., adapter=...) loads it unmerged)")
    if config.deepspeed and not Path(config.deepspeed).is_file():
        raise UserInputError(f"--deepspeed {config.deepspeed!r}: no such file")
    check_output_folder(config.output_dir)
    check_outputs(config.output_dir, (LOG_FILE, CONFIG_FILE, SUMMARY_FILE, PLOT_FILE),
                  {"--train": config.train_file, "--eval": config.eval_file, "--deepspeed": config.deepspeed},
                  folders=(ADAPTER_DIR, CHECKPOINTS_DIR, MERGED_DIR), foreign=foreign_runs(CONFIG_FILE))
    if not _is_utf8(config.output_dir):  # transformers writes the path into the saved files' JSON
        raise UserInputError(f"--output {config.output_dir!r}: not a UTF-8 path; choose another folder name")
    if config.num_workers > MAX_WORKERS:
        raise UserInputError(f"num_workers must be at most {MAX_WORKERS}, got {config.num_workers}")
    check_prompts_dir(config.prompts_dir)


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: an undecodable byte of the name
        return False
    return True
