"""Benchmark readers: every format becomes a stream of :class:`Sample` objects.

The readers (``coco``: FineCops-Ref, Ref-Adv, Ref-Reasoning, RefCOCO in the MDETR format and
GREC; ``grefcoco``: gRefCOCO as released) check the fields they use and raise
:class:`~tools.errors.UserInputError` naming the file, the record and the field. Which
format name reads with which reader, and is scored how, is the registry
``tools.evaluation.formats`` (``read_dataset(format, ...)``).
"""

from __future__ import annotations

from .coco import read_finecops_ref, read_grec, read_ref_adv, read_ref_reasoning, read_refcoco
from .grefcoco import read_grefcoco
from .sample import NEGATIVE_FIELDS, Sample

__all__ = [
    "NEGATIVE_FIELDS",
    "Sample",
    "read_finecops_ref",
    "read_grec",
    "read_grefcoco",
    "read_ref_adv",
    "read_ref_reasoning",
    "read_refcoco",
]
