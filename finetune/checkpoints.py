"""Training checkpoints that a run resumes from exactly where it stopped.

``<output>/checkpoints/checkpoint-<step>/`` holds

- ``adapter_model.safetensors`` + ``adapter_config.json``: the LoRA weights (the folder is
  itself a PEFT adapter, loadable with ``QwenVL.from_pretrained(..., adapter=...)``);
- ``optimizer.pt`` and ``scheduler.pt``;
- ``rng_state_<process>.pt``: Python, NumPy, torch (and CUDA) generators of each process,
  so dropout draws continue as if the run had never stopped;
- ``trainer_state.json``: the optimizer step reached and the settings that fix the data
  order (seed, batch size, accumulation, processes, sample count). The order of an epoch
  depends only on these, so the resumed run skips exactly the micro-batches already done.

Everything is stored without pickled objects, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from tools.files import write_atomically
from tools.errors import UserInputError

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LATEST = "latest"


def save_checkpoint(folder: Path, *, step: int, model, optimizer, scheduler, accelerator,
                    data_order: dict[str, Any]) -> Path:
    """Write the state after optimizer step ``step`` into ``folder/checkpoint-<step>``.

    Every process must call this (each writes its own generator states).
    """
    target = folder / f"{CHECKPOINT_PREFIX}{step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        target.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(target)
        torch.save(optimizer.state_dict(), target / "optimizer.pt")
        torch.save(scheduler.state_dict(), target / "scheduler.pt")
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), target / f"rng_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Written last and atomically: its presence is what marks the checkpoint complete.
        write_atomically(target / STATE_FILE, json.dumps({"step": step, "data_order": data_order}, indent=2))
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(checkpoint: Path, *, model, optimizer, scheduler, accelerator,
                    data_order: dict[str, Any]) -> int:
    """Restore adapter, optimizer, scheduler and generators from ``checkpoint``; returns its step.

    Refuses a checkpoint written with settings that change the data order, since the
    skipped batches would then not be the ones already trained on.
    """
    from peft import set_peft_model_state_dict

    state = json.loads((checkpoint / STATE_FILE).read_text())
    changed = {key: (state["data_order"].get(key), value) for key, value in data_order.items()
               if state["data_order"].get(key) != value}
    if changed:
        details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise UserInputError(f"cannot resume from {checkpoint}: the data order would change ({details})")
    result = set_peft_model_state_dict(accelerator.unwrap_model(model), load_file(checkpoint / ADAPTER_WEIGHTS))
    if getattr(result, "unexpected_keys", None):
        raise UserInputError(f"{checkpoint}: adapter weights do not fit this LoRA setup "
                             f"(e.g. {result.unexpected_keys[0]})")
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(checkpoint / f"rng_state_{accelerator.process_index}.pt", weights_only=True))
    return int(state["step"])


def find_checkpoint(resume: str, folder: Path) -> Path:
    """The checkpoint named by ``resume``: a checkpoint folder, or ``"latest"`` in ``folder``."""
    if resume == LATEST:
        found = list_checkpoints(folder)
        if not found:
            raise UserInputError(f"--resume latest: no checkpoint in {folder}")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise UserInputError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}); "
                             f"give a {CHECKPOINT_PREFIX}<step> folder or '{LATEST}'")
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints under ``folder``, oldest step first."""
    pattern = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")
    found = [(int(match.group(1)), path) for path in folder.glob(f"{CHECKPOINT_PREFIX}*")
             if (match := pattern.fullmatch(path.name)) and (path / STATE_FILE).is_file()]
    return [path for _, path in sorted(found)]


def prune_checkpoints(folder: Path, keep: int | None) -> None:
    """Delete all but the ``keep`` newest checkpoints (``None``: keep all)."""
    if keep is None:
        return
    for path in list_checkpoints(folder)[: -keep or None]:
        shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
