"""Readers of COCO-style referring-expression files: one image entry per expression.

FineCops-Ref, Ref-Adv and Ref-Reasoning (as the FineCops-Ref authors ship them),
RefCOCO/RefCOCO+/RefCOCOg in the MDETR format (``final_refcoco_testA.json``) and the
GREC conversion of gRefCOCO all write each expression as an ``images`` entry whose
``caption`` is the expression, with its target boxes as ``annotations`` (``bbox`` in
``xywh``) pointing at it through ``image_id``. The readers yield :class:`Sample` objects
lazily, in the order of ``images``, after checking every field they use.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import boxes as box_ops
from ..errors import UserInputError
from .records import Record, load_json, records
from .sample import Sample

FINECOPS_LEVELS = (1, 2, 3)
NEGATIVE_CATEGORIES = ("text", "image")
# A no-target expression in the GREC conversion carries one annotation with this category.
NO_TARGET_CATEGORY = -1


def read_finecops_ref(annotations: str | Path, image_root: str | Path | None = None) -> Iterator[Sample]:
    """FineCops-Ref positives and negatives.

    Each image entry has exactly one annotation (the reference evaluator asserts it).
    ``level`` (1, 2 or 3) is required; a negative is an entry with ``negative_type``
    and must also carry ``negative_level``, ``negative_cate`` (``text`` or ``image``)
    and ``positive_id`` (the ``id`` of its positive's image entry); ``tuple_type`` is
    optional. These fields are read from the annotation, as the reference evaluator
    does, or from the image entry when the annotation lacks them. Negatives get no
    boxes: nothing in their image is referred to.
    """
    return _read_single_target(Path(annotations), image_root, levels=FINECOPS_LEVELS)


def read_ref_adv(annotations: str | Path, image_root: str | Path | None = None) -> Iterator[Sample]:
    """Ref-Adv in the FineCops-Ref COCO shape; ``level`` is optional (any integer)."""
    return _read_single_target(Path(annotations), image_root, levels=None)


def read_ref_reasoning(annotations: str | Path, image_root: str | Path | None = None) -> Iterator[Sample]:
    """Ref-Reasoning in the FineCops-Ref COCO shape; ``level`` is optional (any integer)."""
    return _read_single_target(Path(annotations), image_root, levels=None)


def read_refcoco(annotations: str | Path, image_root: str | Path | None = None) -> Iterator[Sample]:
    """RefCOCO, RefCOCO+ or RefCOCOg in the MDETR COCO format: one box per image entry."""
    path = Path(annotations)
    for image, anns in _images_with_annotations(path):
        (ann,) = _exactly_one(image, anns)
        yield Sample(
            id=image.identifier(),
            image_path=_image_path(image, image_root),
            expression=image.text("caption"),
            boxes=box_ops.xywh_to_xyxy(ann.xywh()),
            image_size=image.size(),
        )


def read_grec(annotations: str | Path, image_root: str | Path | None = None) -> Iterator[Sample]:
    """gRefCOCO converted for the authors' GREC evaluator: every target an annotation.

    An expression whose annotation has ``category_id`` -1 (or that has no annotation)
    refers to nothing and gets no boxes; otherwise every annotation is a target box.
    """
    path = Path(annotations)
    for image, anns in _images_with_annotations(path):
        markers = [ann.integer("category_id", required=False) == NO_TARGET_CATEGORY for ann in anns]
        if any(markers) and not all(markers):
            raise image.error("annotations", "mix a no-target marker (category_id -1) with target boxes")
        boxes = np.zeros((0, 4)) if any(markers) else box_ops.xywh_to_xyxy([ann.xywh() for ann in anns])
        yield Sample(
            id=image.identifier(),
            image_path=_image_path(image, image_root),
            expression=image.text("caption"),
            boxes=boxes,
            image_size=image.size(),
        )


def _read_single_target(path: Path, image_root, levels: tuple[int, ...] | None) -> Iterator[Sample]:
    for image, anns in _images_with_annotations(path):
        (ann,) = _exactly_one(image, anns)
        level = _holder(ann, image, "level").integer("level", required=levels is not None, allowed=levels)
        negative = _negative_fields(ann, image) if _holder(ann, image, "negative_type").has("negative_type") else None
        yield Sample(
            id=image.identifier(),
            image_path=_image_path(image, image_root),
            expression=image.text("caption"),
            boxes=np.zeros((0, 4)) if negative else box_ops.xywh_to_xyxy(ann.xywh()),
            level=level,
            negative=negative,
            image_size=image.size(),
        )


def _holder(ann: Record, image: Record, name: str) -> Record:
    """The record carrying ``name``: the annotation, as the reference reads it, else the image entry
    (some exports put the fields there); the annotation when neither has it, so errors name it."""
    return ann if ann.has(name) or not image.has(name) else image


def _negative_fields(ann: Record, image: Record) -> dict:
    """A negative's metadata, keyed like ``sample.NEGATIVE_FIELDS``, checked."""
    category_holder = _holder(ann, image, "negative_cate")
    category = category_holder.text("negative_cate")
    if category not in NEGATIVE_CATEGORIES:
        raise category_holder.error("negative_cate", f"must be 'text' or 'image', got {category!r}")
    return {
        "negative_type": _holder(ann, image, "negative_type").text("negative_type"),
        "negative_level": _holder(ann, image, "negative_level").identifier("negative_level"),
        "negative_cate": category,
        "positive_id": _holder(ann, image, "positive_id").identifier("positive_id"),
        "tuple_type": _holder(ann, image, "tuple_type").raw("tuple_type", required=False),
    }


def _images_with_annotations(path: Path) -> Iterator[tuple[Record, list[Record]]]:
    data = load_json(path)
    by_image: dict[str, list[Record]] = defaultdict(list)
    for ann in records(data, "annotations", path):
        by_image[str(ann.identifier("image_id"))].append(ann)
    seen: set[str] = set()
    for image in records(data, "images", path):
        key = str(image.identifier())
        if key in seen:
            raise image.error("id", f"repeats the id {image.data['id']!r} of an earlier image entry")
        seen.add(key)
        yield image, by_image.pop(key, [])
    for anns in by_image.values():
        orphan = anns[0]
        raise orphan.error("image_id", f"refers to image {orphan.data['image_id']!r}, which is not in 'images'")


def _exactly_one(image: Record, anns: list[Record]) -> list[Record]:
    if len(anns) != 1:
        raise UserInputError(f"{image.where}: has {len(anns)} annotations, expected exactly one")
    return anns


def _image_path(image: Record, image_root) -> Path:
    file_name = image.text("file_name")
    return Path(image_root) / file_name if image_root is not None else Path(file_name)
