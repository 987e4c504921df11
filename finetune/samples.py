"""CRS instruction samples: the JSONL format, its conversion to chat turns, and LLaMA-Factory export.

One JSON object per line::

    {"id": "refcocog-123-0", "image": "images/123.jpg", "expression": "the man in red",
     "candidates": [[10, 20, 110, 220], [150, 30, 200, 90]], "image_size": [640, 480],
     "allow_none": false, "answer": "A", "meta": {"iou": 0.83}}

``candidates`` are ``xyxy`` pixel boxes of the original image, in option order (A, B, ...);
with ``allow_none`` one more option, the last letter, means "None". ``meta`` is optional
free-form provenance that training ignores. A relative ``image`` path is relative to the
JSONL file's folder.

The user turn is built with ``crs_prompt``, exactly as ``QwenVL.select`` asks at inference,
so the model is trained on the very question it will be asked. ``read_training_samples`` also
reads verification files (``verify_samples.py``), one yes/no question per candidate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from tools.files import read_json_lines, write_atomically
from tools.detections import Detections
from tools.errors import UserInputError
from tools.numbers import is_finite_number
from tools.text import clean_expression
from tools.mllm.crs import crs_prompt, letter_token_ids, option_letters
from tools.mllm.families import QWEN2_VL, ModelFamily

# LLaMA-Factory's registry of datasets, in the folder beside them.
DATASET_INFO_FILE = "dataset_info.json"

REQUIRED_FIELDS = ("id", "image", "expression", "candidates", "image_size", "allow_none", "answer")
OPTIONAL_FIELDS = ("meta",)
# LLaMA-Factory replaces this placeholder in a user message with the image's vision tokens.
LLAMA_FACTORY_IMAGE = "<image>"


@dataclass(frozen=True)
class CRSSample:
    """One multiple-choice question: which candidate box does ``expression`` refer to?"""

    id: str
    image: str  # path of the image file
    expression: str
    candidates: tuple[tuple[float, float, float, float], ...]  # xyxy pixels, option order
    image_size: tuple[int, int]  # (w, h) of the original image
    allow_none: bool
    answer: str  # an option letter; the last one means "None" when allow_none
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> list[str]:
        """The option letters offered, the "None" letter last when ``allow_none``."""
        return option_letters(len(self.candidates), self.allow_none)

    @property
    def answer_index(self) -> int:
        """Position of the answer among the options."""
        return self.letters.index(self.answer)

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self.letters)

    def option_token_ids(self, tokenizer) -> list[list[int]]:
        """Per option, the ids that spell its letter (what ``select`` reads)."""
        return letter_token_ids(tokenizer, self.letters)

    def detections(self) -> Detections:
        """The candidates as ``Detections`` (scores play no part in the prompt)."""
        boxes = np.asarray(self.candidates, dtype=np.float64).reshape(-1, 4)
        return Detections(boxes, np.ones(len(boxes)))

    def prompt(
        self,
        prompts_dir: str | None = None,
        *,
        family: ModelFamily = QWEN2_VL,
        input_size: tuple[int, int] | None = None,
    ) -> str:
        """The CRS question text, identical to what ``QwenVL.select`` sends a model of ``family``
        (default Qwen2-VL, the authors' format); ``input_size`` as for ``crs_prompt``."""
        text, _ = crs_prompt(self.expression, self.detections(), self.image_size, self.allow_none,
                             family=family, input_size=input_size, prompts_dir=prompts_dir)
        return text

    def questions(self, prompts_dir: str | None = None) -> list[tuple[str, str]]:
        """``(question, answer)`` turns this sample teaches, in Qwen2-VL's box language (the export's)."""
        return [(self.prompt(prompts_dir), self.answer)]

    def to_dict(self) -> dict[str, Any]:
        """The JSONL object (``meta`` only when not empty)."""
        record = {
            "id": self.id,
            "image": self.image,
            "expression": self.expression,
            "candidates": [list(box) for box in self.candidates],
            "image_size": list(self.image_size),
            "allow_none": self.allow_none,
            "answer": self.answer,
        }
        if self.meta:
            record["meta"] = dict(self.meta)
        return record


def parse_sample(record: Any, where: str = "sample") -> CRSSample:
    """Validate one decoded JSON object; errors name ``where`` and the offending field."""

    def fail(name: str, problem: str) -> UserInputError:
        return UserInputError(f"{where}: field {name!r} {problem}")

    if not isinstance(record, dict):
        raise UserInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "answers" in record and "answer" not in record:
        raise UserInputError(f"{where}: a yes/no verification sample (finetune-data --task verify), not a "
                             "multiple-choice one; read it with read_training_samples")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise fail(name, "is missing")
    unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise UserInputError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; extra data goes in 'meta'")
    sample_id = record["id"]
    if isinstance(sample_id, bool) or not isinstance(sample_id, (str, int)) or str(sample_id) == "":
        raise fail("id", "must be a non-empty string or an integer")
    for name in ("image", "expression"):
        if not isinstance(record[name], str) or not record[name].strip():
            raise fail(name, "must be a non-empty string")
    try:  # as locate cleans it: no control characters or markup, at most MAX_EXPRESSION_CHARS
        expression = clean_expression(record["expression"])
    except UserInputError as error:
        raise fail("expression", f"is unusable: {error}") from None
    size = record["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise fail("image_size", f"must be [width, height] in positive integers, got {size!r}")
    candidates = record["candidates"]
    if not isinstance(candidates, list):
        raise fail("candidates", "must be a list of [x1, y1, x2, y2] boxes")
    for i, box in enumerate(candidates):
        if not (isinstance(box, list) and len(box) == 4 and all(is_finite_number(v) for v in box)):
            raise fail("candidates", f"item {i} is not four finite numbers: {box!r}")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise fail("candidates", f"item {i} is not x1 < x2 and y1 < y2: {box!r}")
    if not isinstance(record["allow_none"], bool):
        raise fail("allow_none", "must be true or false")
    letters = option_letters(len(candidates), record["allow_none"])
    # With one option or none, inference answers without asking the model: nothing to learn.
    if len(letters) < 2:
        raise fail("candidates", f"give at least 2 options, got {len(letters)}")
    if record["answer"] not in letters:
        raise fail("answer", f"must be one of {', '.join(letters)}, got {record['answer']!r}")
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise fail("meta", "must be a JSON object")
    return CRSSample(
        id=str(sample_id),
        image=record["image"],
        expression=expression,
        candidates=tuple(tuple(float(v) for v in box) for box in candidates),
        image_size=(int(size[0]), int(size[1])),
        allow_none=record["allow_none"],
        answer=record["answer"],
        meta=meta,
    )


def read_samples(path: str | os.PathLike) -> list[CRSSample]:
    """Read and validate a CRS JSONL file; relative image paths become absolute (from its folder).

    Blank lines are skipped. Any problem raises ``UserInputError`` naming the line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no CRS sample file {str(path)!r}")
    samples: list[CRSSample] = []
    seen: dict[str, str] = {}
    for where, record in read_json_lines(path):
        sample = parse_sample(record, where)
        if sample.id in seen:
            raise UserInputError(f"{where}: field 'id' {sample.id!r} repeats {seen[sample.id]}")
        seen[sample.id] = where.rpartition(": ")[2]  # "line N"
        image = Path(sample.image).expanduser()
        if not image.is_absolute():
            image = path.parent / image
        samples.append(replace(sample, image=str(image)))
    if not samples:
        raise UserInputError(f"{path}: no samples")
    return samples


def check_images(items: Iterable, where: str) -> None:
    """Every image the training ``items`` (samples or questions) name opens, is not too narrow and
    has the ``image_size`` they say, read from the file headers before any model loads: a bad
    one would otherwise stop training mid-way."""
    from tools.errors import ImageLoadError
    from tools.images import check_aspect_ratio, frame_sizes

    sizes: dict[str, tuple[int, int]] = {}
    for item in items:
        try:
            if item.image not in sizes:
                sizes[item.image] = frame_sizes(item.image)[1]  # as load_image turns it
                check_aspect_ratio(sizes[item.image])
        except ImageLoadError as error:
            raise UserInputError(f"{where}: sample {item.id!r}: {error}") from None
        if sizes[item.image] != tuple(item.image_size):
            width, height = sizes[item.image]
            raise UserInputError(f"{where}: sample {item.id!r}: image {item.image} is {width}x{height}, but its "
                                 f"image_size says {list(item.image_size)}")


def read_training_samples(path: str | os.PathLike) -> list:
    """The training items of a samples file: its ``CRSSample`` lines, or, for a verification file
    (``finetune-data --task verify``), one ``VerifyQuestion`` per candidate of every line."""
    from .verify_samples import VerifySample

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no CRS sample file {str(path)!r}")
    records = list(read_json_lines(path))
    if not records or not (isinstance(records[0][1], dict) and "answers" in records[0][1]):
        return read_samples(path)
    questions = []
    for where, record in records:
        sample = VerifySample.from_dict(record, where)
        image = Path(sample.image).expanduser()
        questions += replace(sample, image=str(image if image.is_absolute() else path.parent / image)).split()
    return questions


def write_samples(samples: Iterable[CRSSample], path: str | os.PathLike) -> Path:
    """Write ``samples`` as JSONL (image paths as they are in the samples); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "".join(json.dumps(sample.to_dict(), ensure_ascii=False) + "\n" for sample in samples))
    return path


def sample_conversation(
    sample: Any,
    image: Image.Image | str | None = None,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    prompts_dir: str | None = None,
    family: ModelFamily = QWEN2_VL,
    patch_size: int | None = None,
) -> list[dict]:
    """The chat turns of ``sample`` (a ``CRSSample`` or ``VerifyQuestion``): user = image + its
    question, assistant = the answer (letter, or Yes / No).

    The user turn has the layout of ``QwenVL.select`` (image item with its pixel budget, then
    the text), so ``qwen_vl_utils.process_vision_info`` resizes the image the same way, and
    the options are written in ``family``'s box language (for Qwen2.5-VL in pixels of the
    input resized within the budget and ``patch_size``). ``image`` defaults to the sample's path.
    """
    input_size = None
    if family.needs_input_size:
        input_size = family.input_size(sample.image_size, min_pixels, max_pixels, patch_size)
    image_item: dict[str, Any] = {"type": "image", "image": sample.image if image is None else image}
    if min_pixels is not None:
        image_item["min_pixels"] = min_pixels
    if max_pixels is not None:
        image_item["max_pixels"] = max_pixels
    return [
        {"role": "user", "content": [image_item, {"type": "text", "text": sample.prompt(
            prompts_dir, family=family, input_size=input_size)}]},
        {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]},
    ]


def export_llama_factory(
    samples: Sequence[Any],
    output_dir: str | os.PathLike,
    dataset_name: str = "rex_crs",
    *,
    relative_images: bool = False,
    prompts_dir: str | None = None,
) -> Path:
    """Write ``samples`` for LLaMA-Factory SFT and register them in ``dataset_info.json``.

    The format is LLaMA-Factory's multimodal ShareGPT ("OpenAI") layout, as in its
    ``data/mllm_demo.json`` and ``data/dataset_info.json`` entry ``mllm_demo``: a JSON list of
    ``{"messages": [{"role": "user", "content": "<image>QUESTION"}, {"role": "assistant",
    "content": "B"}], "images": [PATH]}``, one ``<image>`` per image. With its ``qwen2_vl``
    template (default system prompt, ``<image>`` expanded to the vision tokens) the user turn
    renders as ``QwenVL.select`` asks it; set its ``image_max_pixels`` to the inference
    budget so images are resized alike. An existing
    ``dataset_info.json`` keeps its other entries. ``relative_images`` writes image paths
    relative to ``output_dir`` (LLaMA-Factory resolves them against its ``media_dir``, by
    default the dataset folder). ``samples`` are ``CRSSample`` or ``VerifySample`` (one record per
    question: a verification sample asks one per candidate). Returns the dataset file.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for sample in samples:
        image = os.path.abspath(sample.image)
        if relative_images:
            image = os.path.relpath(image, output_dir.resolve())
        for question, answer in sample.questions(prompts_dir):
            records.append({
                "messages": [
                    {"role": "user", "content": LLAMA_FACTORY_IMAGE + question},
                    {"role": "assistant", "content": answer},
                ],
                "images": [image],
            })
    data_file = output_dir / f"{dataset_name}.json"
    write_atomically(data_file, json.dumps(records, ensure_ascii=False, indent=1))
    info_file = output_dir / DATASET_INFO_FILE
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    info[dataset_name] = {
        "file_name": data_file.name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    write_atomically(info_file, json.dumps(info, indent=2))
    return data_file


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

