"""Loading a detector checkpoint: find it, check its architecture, load processor and weights;
``TransformersDetector`` is what every bundled detector shares (loading, device, repr)."""

from __future__ import annotations

import os

import torch

from ..checkpoints import resolve_checkpoint, unloadable_checkpoint
from ..devices import resolve_device, resolve_dtype
from ..errors import UserInputError


def load_detector_parts(
    name_or_path: str | os.PathLike,
    model_types: tuple[str, ...],
    title: str,
    auto_class,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """``(model, processor)`` of a checkpoint whose ``config.model_type`` is one of ``model_types``,
    the model on ``device``. ``dtype="auto"`` keeps float32 even on a GPU: detection heads lose
    recall in half precision, and the detector is cheap next to the MLLM."""
    from transformers import AutoConfig, AutoProcessor

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, half_on_gpu=False)
    source = resolve_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir, hint="or pass --detector PATH")
    hub = {"revision": revision, "cache_dir": cache_dir}
    with unloadable_checkpoint(name_or_path, title):
        model_type = AutoConfig.from_pretrained(source, **hub).model_type
        if model_type not in model_types:
            raise UserInputError(
                f"{os.fspath(name_or_path)!r} is a {model_type} checkpoint, not {title}; pass a detector to --detector"
            )
        processor = AutoProcessor.from_pretrained(source, **hub)
        model = auto_class.from_pretrained(source, **hub, dtype=torch_dtype)
    return model.to(torch_device), processor


class TransformersDetector:
    """What the bundled transformers detectors share: ``from_pretrained`` (the checkpoint found and
    checked to be one of ``model_types``, loaded with ``auto_class``), ``device`` and ``repr``.
    A subclass declares those three, its ``default_checkpoint``, and ``__init__(model, processor,
    **options)``; ``from_pretrained``'s other keywords are those options."""

    model_types: tuple[str, ...] = ()
    title = ""
    auto_class = "AutoModelForZeroShotObjectDetection"  # a transformers Auto class name
    default_checkpoint = ""
    # Each serialises its forward passes itself (a ``_lock``, ``one_call_at_a_time``).
    thread_safe = True

    model: torch.nn.Module

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                        dtype: str | torch.dtype = "auto", revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, **options):
        """Load a Hub id or local folder (default ``default_checkpoint``); ``dtype="auto"`` keeps
        float32 even on a GPU (see ``load_detector_parts``); ``options`` go to the constructor."""
        import transformers

        model, processor = load_detector_parts(name_or_path or cls.default_checkpoint, cls.model_types, cls.title,
                                               getattr(transformers, cls.auto_class), device=device, dtype=dtype,
                                               revision=revision, cache_dir=cache_dir)
        return cls(model, processor, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"
