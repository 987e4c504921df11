"""The detector class of a checkpoint, read from its config (as transformers' Auto classes do)."""

from __future__ import annotations

import os

from ..checkpoints import resolve_checkpoint, unloadable_checkpoint
from ..errors import UserInputError

# The bundled detectors, (module, class); each class names the ``config.model_type`` values it runs.
DETECTOR_CLASSES = (
    (".grounding_dino", "GroundingDinoDetector"),
    (".owlv2", "Owlv2Detector"),
    (".florence2", "Florence2Detector"),
)
# Options only some detectors take: given for another one, a clear error rather than a silent no-op.
_OPTIONS = {"focus_score": ("GroundingDinoDetector",)}


def detector_classes() -> list[type]:
    """The bundled detector classes (importing them imports torch)."""
    from importlib import import_module

    return [getattr(import_module(module, __package__), name) for module, name in DETECTOR_CLASSES]


def detector_class(name_or_path: str | os.PathLike, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None):
    """The bundled detector class for a checkpoint (Hub id or folder), from its ``config.json``."""
    from transformers import AutoConfig

    source = resolve_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir, hint="or pass --detector PATH")
    with unloadable_checkpoint(name_or_path, "detector"):
        model_type = AutoConfig.from_pretrained(source, revision=revision, cache_dir=cache_dir).model_type
    classes = detector_classes()
    for cls in classes:
        if model_type in cls.model_types:
            return cls
    raise UserInputError(
        f"{os.fspath(name_or_path)!r} is a {model_type} checkpoint; supported detectors: "
        f"{', '.join(cls.title.replace(' / ', ', ') for cls in classes)} (or plug in your own Detector)"
    )


def load_detector(name_or_path: str | os.PathLike, **options):
    """Load whichever supported detector ``name_or_path`` is; ``options`` are its ``from_pretrained``'s
    (``device``, ``dtype``, ``revision``, ...; ``focus_score`` for Grounding DINO only)."""
    from ..devices import resolve_device

    resolve_device(options.get("device", "auto"))  # a device that is not there: said before any lookup
    cls = detector_class(name_or_path, options.get("revision"), options.get("cache_dir"))
    for option, owners in _OPTIONS.items():
        if options.get(option) is not None and cls.__name__ not in owners:
            raise UserInputError(f"{option} applies to {', '.join(owners)}, not to {cls.__name__}")
        if option in options and options[option] is None:
            del options[option]
    return cls.from_pretrained(name_or_path, **options)
