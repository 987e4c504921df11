"""Benchmark readers: every format becomes a stream of :class:`Sample` objects.

Formats (the names ``read_dataset`` and ``agent-cli score --format`` take):

- ``finecops-ref``: FineCops-Ref COCO file, positives and negatives, levels 1-3;
- ``ref-adv``, ``ref-reasoning``: the same COCO shape, level optional;
- ``refcoco``: RefCOCO/RefCOCO+/RefCOCOg in the MDETR COCO format;
- ``grefcoco``: gRefCOCO as released (``grefs(unc).json`` + ``instances.json``), with ``split``;
- ``grec``: gRefCOCO converted for the authors' GREC evaluator (COCO file, ``category_id`` -1 = no target).

Every reader checks the fields it uses and raises :class:`~tools.errors.UserInputError`
naming the file, the record and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from ..errors import UserInputError
from .coco import read_finecops_ref, read_grec, read_ref_adv, read_ref_reasoning, read_refcoco
from .grefcoco import read_grefcoco
from .sample import NEGATIVE_FIELDS, Sample

READERS: dict[str, Callable[..., Iterator[Sample]]] = {
    "finecops-ref": read_finecops_ref,
    "ref-adv": read_ref_adv,
    "ref-reasoning": read_ref_reasoning,
    "refcoco": read_refcoco,
    "grefcoco": read_grefcoco,
    "grec": read_grec,
}
FORMATS = tuple(READERS)


def read_dataset(
    format: str, annotations: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> Iterator[Sample]:
    """Samples of ``annotations`` in ``format`` (one of :data:`FORMATS`), read lazily.

    ``image_root`` is joined to each ``file_name`` (without it, ``image_path`` is the bare
    ``file_name``). ``split`` selects a gRefCOCO split; COCO-style files hold one split
    each, so it is refused for the other formats.
    """
    if format not in READERS:
        raise UserInputError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "grefcoco":
        return read_grefcoco(annotations, image_root, split)
    if split is not None:
        raise UserInputError(f"a split applies to 'grefcoco' only; a {format} file holds one split")
    return READERS[format](annotations, image_root)


__all__ = [
    "FORMATS",
    "NEGATIVE_FIELDS",
    "READERS",
    "Sample",
    "read_dataset",
    "read_finecops_ref",
    "read_grec",
    "read_grefcoco",
    "read_ref_adv",
    "read_ref_reasoning",
    "read_refcoco",
]
