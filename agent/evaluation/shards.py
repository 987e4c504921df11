"""One benchmark run over several processes (``--shard i/n``, or ``RANK`` / ``WORLD_SIZE`` under
``accelerate launch`` and ``torchrun``): each writes its shard's file, and the process that
completes the last shard merges them into ``predictions.jsonl``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tools.datasets import Sample
from tools.errors import UserInputError
from tools.evaluation import Prediction, PredictionWriter, read_predictions
from tools.files import replaced_atomically

from .run import PREDICTIONS_FILE


@dataclass(frozen=True)
class Shard:
    """Every ``count``-th sample starting at ``index`` (dataset order), written to its own file."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserInputError(f"shard {self.index}/{self.count}: need 0 <= i < n")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/n"``, e.g. ``"0/4"``."""
        index, slash, count = text.partition("/")
        if not (slash and index.strip().isdigit() and count.strip().isdigit()):
            raise UserInputError(f"--shard takes i/n (e.g. 0/4), got {text!r}")
        return cls(int(index), int(count))

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> "Shard | None":
        """This process's shard under ``accelerate launch`` or ``torchrun`` (``RANK`` of ``WORLD_SIZE``)."""
        env = os.environ if env is None else env
        try:
            world_size, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        except ValueError:
            raise UserInputError(
                f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not integers"
            ) from None
        return cls(rank, world_size) if world_size > 1 else None

    def select(self, samples: list[Sample]) -> list[Sample]:
        return samples[self.index :: self.count]

    @property
    def file_name(self) -> str:
        return f"predictions.shard-{self.index}-of-{self.count}.jsonl"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def local_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """``device``, except that ``"auto"`` under a multi-process launcher with CUDA present becomes
    ``cuda:{LOCAL_RANK}``: each process gets its own GPU (shared round-robin when there are
    more processes than GPUs)."""
    env = os.environ if env is None else env
    if device != "auto" or "LOCAL_RANK" not in env or int(env.get("WORLD_SIZE", "1")) < 2:
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(env['LOCAL_RANK']) % torch.cuda.device_count()}"


def merge_shards(output: Path, samples: list[Sample], count: int) -> Path | None:
    """Merge the ``count`` shard files into ``output/predictions.jsonl`` in dataset order, once
    every sample has a prediction; ``None`` (nothing written) while some shard is unfinished.

    The merged file is written under a temporary name and renamed, so two shards finishing
    at the same moment each put the same complete file in place.
    """
    by_id: dict[str, Prediction] = {}
    for index in range(count):
        path = output / Shard(index, count).file_name
        if path.exists():
            by_id.update((str(prediction.id), prediction) for prediction in read_predictions(path))
    if any(str(sample.id) not in by_id for sample in samples):
        return None
    target = output / PREDICTIONS_FILE
    with replaced_atomically(target) as temporary, PredictionWriter(temporary) as writer:
        for sample in samples:
            writer.write(by_id[str(sample.id)])
    return target
