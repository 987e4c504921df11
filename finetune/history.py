"""The training log (JSONL, one record per optimizer step or evaluation; ``trainer.LogFileCallback``
writes it) and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.files import read_json_lines


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a log file (none when it does not exist)."""
    if not path.is_file():
        return []
    return [record for _, record in read_json_lines(path)]


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
