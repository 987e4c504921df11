"""``agent-cli finetune`` (register ``finetune`` on the app), or on its own: ``python -m finetune.cli``.

Its options are ``TrainConfig``'s fields, with their help (``tools.settings``).
"""

from __future__ import annotations

import json

import typer

from tools.settings import command_for

from .train import TrainConfig


def _finetune(config: TrainConfig) -> None:
    from .train import train

    summary = train(config)
    if not summary:  # under `accelerate launch` only the main process reports
        return
    brief = {key: summary[key] for key in ("steps", "steps_run", "first_loss", "last_loss", "eval_accuracy",
                                           "adapter_dir", "seconds")}
    typer.echo(json.dumps(brief, indent=2))


finetune = command_for(TrainConfig, _finetune, doc="Instruction-tune a Qwen VL or InternVL model for Candidate "
                                                   "Region Selection with LoRA (choice or verify samples).")


if __name__ == "__main__":  # python -m finetune.cli ... / accelerate launch -m finetune.cli ...
    from tools.cli_runner import run_command

    raise SystemExit(run_command(finetune, None, "finetune"))
