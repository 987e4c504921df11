"""The training log (JSONL, one record per optimizer step or evaluation) and its plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.files import write_atomically


class TrainingLog:
    """Appends records to ``path``; only the main process writes (``enabled``).

    A run resumed from step ``resume_step`` first drops the records of later steps: those
    steps happened after the checkpoint and are about to be trained again.
    """

    def __init__(self, path: Path, *, resume_step: int | None = None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept = [] if resume_step is None else [r for r in read_log(path) if r["step"] <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as log:
                log.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a log file (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_history(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss per step and evaluation accuracy, as a PNG; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [record for record in records if "loss" in record]
    evals = [record for record in records if "eval_accuracy" in record]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss (answer tokens)")
    if evals:
        accuracy_axis = loss_axis.twinx()
        accuracy_axis.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-",
                           color="tab:orange", label="eval option accuracy")
        accuracy_axis.set_ylim(0, 1)
        accuracy_axis.set_ylabel("option accuracy")
        accuracy_axis.legend(loc="upper right")
    loss_axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
