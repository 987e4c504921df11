"""Reader of gRefCOCO as released: ``grefs(unc).json`` plus ``instances.json``.

``grefs(unc).json`` is a list of refs; each has ``ref_id``, ``image_id``, ``split``,
``file_name``, ``ann_id`` (one id or a list; ``[-1]`` for no target), ``no_target``
and ``sentences`` (each with ``sent`` and ``sent_id``). ``instances.json`` is COCO
``images``/``annotations``, where the boxes (``xywh``) live. Every sentence becomes
one :class:`Sample` with the sentence id as its id, as in the authors' ``G_REFER`` API.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import boxes as box_ops
from ..errors import UserInputError
from .records import Record, load_json, records
from .sample import Sample

REFS_FILE = "grefs(unc).json"
INSTANCES_FILE = "instances.json"
NO_TARGET_ANN_ID = -1
# Ref file names append the annotation id ("COCO_train2014_000000380440_491042.jpg"); the
# image on disk is the COCO one ("COCO_train2014_000000380440.jpg"), as the authors' converter strips it.
_ANNOTATION_SUFFIX = re.compile(r"^(COCO_[a-z]+\d{4}_\d+)_\d+(\.\w+)$")


def read_grefcoco(
    annotations: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> Iterator[Sample]:
    """Samples of the released gRefCOCO, optionally of one ``split`` (``train``, ``val``, ...).

    ``annotations`` is the ``grefs(unc).json`` file (``instances.json`` is read from the
    same folder) or the folder holding both. A ref whose ``ann_id`` is ``[-1]`` (or
    empty) refers to nothing: its samples get no boxes. ``image_root`` is COCO's
    ``train2014`` folder.
    """
    refs_path, instances_path = _locate(Path(annotations))
    refs = load_json(refs_path)
    if not isinstance(refs, list):
        raise UserInputError(f"{refs_path}: expected a JSON list of refs, got {type(refs).__name__}")
    ref_records = [Record(ref, refs_path, f"entry {index}", "ref_id") for index, ref in enumerate(refs)]
    available = sorted({str(ref.raw("split")) for ref in ref_records})
    if split is not None and split not in available:
        raise UserInputError(f"{refs_path}: no split {split!r}; the file has {', '.join(available) or 'none'}")
    instances = load_json(instances_path)
    boxes_by_ann = {str(ann.identifier()): ann for ann in records(instances, "annotations", instances_path)}
    sizes = {str(image.identifier()): image.size() for image in records(instances, "images", instances_path)}
    for ref in ref_records:
        if split is not None and str(ref.raw("split")) != split:
            continue
        boxes = _target_boxes(ref, boxes_by_ann, instances_path)
        image_id = ref.identifier("image_id")
        image_path = Path(coco_image_file(ref.text("file_name")))
        sentences = ref.raw("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise ref.error("sentences", "must be a non-empty list of {'sent', 'sent_id'} objects")
        for position, data in enumerate(sentences):
            sentence = Record(data, ref.path, f"{ref.label} sentences[{position}]", "sent_id")
            yield Sample(
                id=sentence.identifier("sent_id"),
                image_path=Path(image_root) / image_path if image_root is not None else image_path,
                expression=sentence.text("sent"),
                boxes=boxes,
                image_size=sizes.get(str(image_id)),
            )


def coco_image_file(file_name: str) -> str:
    """The COCO image a ref's ``file_name`` names, without its annotation-id suffix."""
    match = _ANNOTATION_SUFFIX.match(file_name)
    return match.group(1) + match.group(2) if match else file_name


def _locate(annotations: Path) -> tuple[Path, Path]:
    if annotations.is_dir():
        return annotations / REFS_FILE, annotations / INSTANCES_FILE
    return annotations, annotations.parent / INSTANCES_FILE


def _target_boxes(ref: Record, boxes_by_ann: dict[str, Record], instances_path: Path) -> np.ndarray:
    ann_ids = ref.raw("ann_id")
    ann_ids = ann_ids if isinstance(ann_ids, list) else [ann_ids]
    if any(isinstance(ann_id, bool) or not isinstance(ann_id, (int, str)) for ann_id in ann_ids):
        raise ref.error("ann_id", f"must be an annotation id or a list of them, got {ref.raw('ann_id')!r:.80}")
    no_target = ann_ids in ([], [NO_TARGET_ANN_ID])
    if ref.raw("no_target", required=False) is True and not no_target:
        raise ref.error("no_target", f"is true but 'ann_id' lists targets {ann_ids!r:.80}")
    if no_target:
        return np.zeros((0, 4))
    missing = [ann_id for ann_id in ann_ids if str(ann_id) not in boxes_by_ann]
    if missing:
        raise ref.error("ann_id", f"refers to annotation {missing[0]!r}, which is not in {instances_path}")
    return box_ops.xywh_to_xyxy([boxes_by_ann[str(ann_id)].xywh() for ann_id in ann_ids])
