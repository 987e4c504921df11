"""The local MLLM class of a checkpoint, read from its config (as transformers' Auto classes do)."""

from __future__ import annotations

import os
import warnings

from ..checkpoints import resolve_checkpoint
from .families import INTERNVL, family_for_model
from .local import LocalVLM, read_config

# Options that only one class reads: given for another checkpoint they are dropped with a warning.
_CLASS_OPTIONS = {"QwenVL": ("min_pixels", "max_pixels"), "InternVL": ("max_patches",)}


def mllm_class(name_or_path: str, revision: str | None = None) -> type[LocalVLM]:
    """``QwenVL`` or ``InternVL``, from the checkpoint's ``config.json`` (no weights are read)."""
    path = resolve_checkpoint(name_or_path, revision=revision, hint="or pass --mllm PATH")
    hub = {} if os.path.isdir(path) else {"revision": revision}
    family = family_for_model(read_config(name_or_path, path, hub).model_type)
    if family is INTERNVL:
        from .internvl import InternVL

        return InternVL
    from .qwen import QwenVL

    return QwenVL


def load_local_mllm(name_or_path: str, **options) -> LocalVLM:
    """Load a local MLLM of whichever supported family ``name_or_path`` is.

    ``options`` are ``LocalVLM.from_pretrained``'s plus each class's own (``min_pixels``,
    ``max_pixels``, ``max_patches``); one set for the other class is ignored, with a warning.
    """
    cls = mllm_class(name_or_path, options.get("revision"))
    for owner, names in _CLASS_OPTIONS.items():
        if owner == cls.__name__:
            continue
        for name in names:
            if options.get(name) is not None:
                warnings.warn(f"{name} applies to {owner} checkpoints; {name_or_path} is {cls.kind}: ignored",
                              stacklevel=2)
            options.pop(name, None)
    return cls.from_pretrained(name_or_path, **options)
