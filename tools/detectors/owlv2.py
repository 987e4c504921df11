"""OWLv2 (``Owlv2ForObjectDetection``) as the specialist: one text query per phrase.

OWLv2 embeds every text query on its own (a CLIP text tower) and scores every image patch's
box against each: a box's score for a query is the sigmoid of its logit, independent of the
other queries. Target focus therefore means querying the target phrase itself: with
``focus``, the query is ``text[focus]`` ("the red car" of "the red car left of the van");
without it, the whole ``text``. The text tower reads at most 16 tokens (``max_position_embeddings``);
a longer query is cut, with a warning. Images are padded to a square (right and bottom) and
resized; the boxes come back relative to that square (``boxes.padded_square_to_pixels``).

The processor's cost grows steeply with the padded side (it smooths before it shrinks, with a
kernel that widens with the shrink factor: 3 s for a 5000-pixel side at 960, minutes on a small
input). An image whose
longer side exceeds ``PRESHRINK_FACTOR`` times the model's input side is first shrunk to that,
keeping its aspect ratio, so the relative boxes are the same; smaller images go through
exactly as the processor takes them.
"""

from __future__ import annotations

import threading
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .. import boxes as box_ops
from ..batching import one_call_at_a_time
from ..defaults import DEFAULT_OWLV2
from ..detections import Detections
from ..text import Span, check_text, neutralise_markup
from .base import focus_spans
from .loading import TransformersDetector

PRESHRINK_FACTOR = 4  # the released 960-pixel models: images over 3840 pixels (about 2 s of processing)


class Owlv2Detector(TransformersDetector):
    """A transformers OWLv2 checkpoint (``google/owlv2-base-patch16-ensemble``, ...); see the module docstring.

    ``detect`` returns every patch's box (3600 for the released 960-pixel models), best first,
    clipped to the image; boxes lying wholly in the padding are dropped.
    """

    model_types = ("owlv2",)  # the checkpoints' config.model_type
    title = "OWLv2"
    default_checkpoint = DEFAULT_OWLV2

    def __init__(self, model, processor, *, max_detections: int | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.max_detections = max_detections
        self.max_query_tokens = int(model.config.text_config.max_position_embeddings)
        self._lock = threading.RLock()  # one forward at a time: calls from a batch take turns

    def detect(self, image: Image.Image, text: str, focus: Span | None = None) -> Detections:
        """Boxes for ``text`` (or its ``focus`` phrase) on ``image``, best first."""
        return self.detect_many(image, [text], [focus])[0]

    def detect_many(
        self, image: Image.Image, texts: Sequence[str], focuses: Sequence[Span | None] | None = None
    ) -> list[Detections]:
        """Several texts on one image: one forward pass, the image encoded once for every query."""
        queries = [query_text(text, focus) for text, focus in zip(texts, focus_spans(texts, focuses))]
        return self._detect([image], [queries])[0]

    def detect_batch(
        self, images: Sequence[Image.Image], texts: Sequence[str], focuses: Sequence[Span | None] | None = None
    ) -> list[Detections]:
        """One (image, text) pair per item, in one forward pass; the same boxes as one at a time."""
        queries = [[query_text(text, focus)] for text, focus in zip(texts, focus_spans(texts, focuses))]
        return [found[0] for found in self._detect(list(images), queries)]

    @one_call_at_a_time
    def _detect(self, images: list[Image.Image], queries: list[list[str]]) -> list[list[Detections]]:
        if len(images) != len(queries):
            raise ValueError(f"{len(images)} images but {len(queries)} query lists")
        logits, pred_boxes = self._forward(images, queries)
        results = []
        for row, (image, texts) in enumerate(zip(images, queries)):
            xyxy = box_ops.padded_square_to_pixels(pred_boxes[row], image.width, image.height)
            xyxy = box_ops.clip_boxes(xyxy, image.width, image.height)
            inside = box_ops.is_valid(xyxy)
            found = []
            for column in range(len(texts)):
                detections = Detections(xyxy[inside], logits[row, inside, column]).sorted()
                found.append(detections if self.max_detections is None else detections[: self.max_detections])
            results.append(found)
        return results

    @torch.inference_mode()
    def _forward(self, images: list[Image.Image], queries: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Sigmoid scores ``(images, patches, queries)`` and relative boxes ``(images, patches, 4)``."""
        width = max(len(texts) for texts in queries)
        padded = [texts + [" "] * (width - len(texts)) for texts in queries]  # as Owlv2Processor pads
        flat = [text for texts in padded for text in texts]
        tokens = self.processor.tokenizer(flat, padding="max_length", truncation=True,
                                          max_length=self.max_query_tokens, return_tensors="pt")
        _warn_truncated(self.processor.tokenizer, flat, self.max_query_tokens)
        pixels = self.processor.image_processor(images=[self._bounded(image) for image in images],
                                                return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        outputs = self.model(input_ids=tokens["input_ids"].to(self.device),
                             attention_mask=tokens["attention_mask"].to(self.device),
                             pixel_values=pixels.to(self.device, dtype))
        scores = torch.sigmoid(outputs.logits.float()).cpu().numpy()
        return scores, outputs.pred_boxes.float().cpu().numpy()

    def _bounded(self, image: Image.Image) -> Image.Image:
        """``image``, shrunk to ``PRESHRINK_FACTOR`` x the input side when its longer side is more."""
        size = self.processor.image_processor.size
        side = max((size.get(key) or 0 for key in ("height", "width", "longest_edge")), default=0)
        limit = PRESHRINK_FACTOR * side
        scale = limit / max(image.size)
        if not limit or scale >= 1:
            return image
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.Resampling.BILINEAR, reducing_gap=3.0)



def query_text(text: str, focus: Span | None) -> str:
    """The query OWLv2 is asked: the focus phrase when given, else the whole text."""
    check_text(text, focus)
    return neutralise_markup(text[focus[0]:focus[1]].strip() if focus is not None else text.strip())


def _warn_truncated(tokenizer, texts: list[str], limit: int) -> None:
    for text in dict.fromkeys(texts):
        ids = tokenizer(text)["input_ids"]
        if len(ids) > limit:
            kept = tokenizer.decode(ids[1:limit - 1])
            warnings.warn(f"OWLv2 reads {limit} tokens of a query; {text!r} is cut to {kept!r}", stacklevel=5)
