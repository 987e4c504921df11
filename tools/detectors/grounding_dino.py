"""Grounding DINO and MM-Grounding-DINO through transformers, with target-focus matching."""

from __future__ import annotations

import threading
from typing import Sequence

import torch
from PIL import Image

from .. import boxes as box_ops
from ..defaults import DEFAULT_DETECTOR
from ..batching import one_call_at_a_time
from ..detections import Detections
from ..errors import UserInputError
from ..profiles import DETECTOR_RESIZES
from ..text import Span, check_text, neutralise_markup
from .base import caption_and_focus_tokens, check_focus_score, focus_spans, query_scores
from .loading import TransformersDetector


class GroundingDinoDetector(TransformersDetector):
    """A transformers ``GroundingDinoForObjectDetection`` or ``MMGroundingDinoForObjectDetection``.

    ``detect`` returns every query's box (``num_queries``, 900 for released models),
    best first, clipped to the image as mmdetection clips them. The image backbone runs
    once per image (see ``_share_backbone_across_repeated_image``): the last image's
    backbone outputs are kept. Without ``focus`` a query's score is its highest sigmoid
    probability over all text tokens, exactly what transformers'
    ``post_process_grounded_object_detection`` reports; with ``focus`` it is the mean of
    its probabilities over the tokens of the focus span (``focus_score="mean"``, what
    mmdetection computes for the authors' ``tokens_positive``), or their maximum
    (``focus_score="max"``, ranking a multi-word target by its strongest word).
    """

    model_types = ("grounding-dino", "mm-grounding-dino")  # the checkpoints' config.model_type
    title = "Grounding DINO / MM-Grounding-DINO"
    default_checkpoint = DEFAULT_DETECTOR
    # How the image may be resized (``resize=``): transformers' processor, or mmdetection's
    # FixScaleResize rounding, which the authors' scripts ran (640x480 -> 1067x800, not 1066x800).
    resizes = DETECTOR_RESIZES

    def __init__(self, model, processor, *, max_detections: int | None = None, focus_score: str = "mean"):
        self.focus_score = check_focus_score(focus_score)
        self.model = model.eval()
        _share_backbone_across_repeated_image(self.model)
        self.processor = processor
        self.max_detections = max_detections
        self.max_text_len = int(model.config.max_text_len)
        self._lock = threading.RLock()  # the backbone keeps the last image's features: one call at a time

    def detect(self, image: Image.Image, text: str, focus: Span | None = None, *,
               resize: str = "transformers") -> Detections:
        """Boxes for ``text`` on ``image``, best first (see the class docstring for scoring);
        ``resize`` is one of ``resizes``."""
        return self.detect_many(image, [text], [focus], resize=resize)[0]

    @one_call_at_a_time
    def detect_many(
        self, image: Image.Image, texts: Sequence[str], focuses: Sequence[Span | None] | None = None, *,
        resize: str = "transformers",
    ) -> list[Detections]:
        """Several texts on one image in one batched forward: the image is preprocessed and its
        (text-independent) backbone features computed once, then shared by every text."""
        if resize not in self.resizes:
            raise UserInputError(f"unknown resize {resize!r}; choose one of {', '.join(self.resizes)}")
        focuses = focus_spans(texts, focuses)
        for text, focus in zip(texts, focuses):
            check_text(text, focus)
        texts = [neutralise_markup(text) for text in texts]  # "[SEP]" would split the caption; spans keep
        tokenizer = self.processor.tokenizer
        captions = [
            caption_and_focus_tokens(text, focus, tokenizer, self.max_text_len, keeps_sep=True, stacklevel=4)
            for text, focus in zip(texts, focuses)
        ]
        logits, pred_boxes = self._forward(image, [caption for caption, _ in captions], resize)
        probs = torch.sigmoid(logits.float())
        xyxy = box_ops.scale_boxes(box_ops.cxcywh_to_xyxy(pred_boxes.reshape(-1, 4)), image.width, image.height)
        xyxy = box_ops.clip_boxes(xyxy, image.width, image.height).reshape(len(texts), -1, 4)
        results = []
        for row, (_, score_tokens) in enumerate(captions):
            scores = query_scores(probs[row], score_tokens, self.focus_score).numpy()
            detections = Detections(xyxy[row], scores).sorted()
            results.append(detections if self.max_detections is None else detections[: self.max_detections])
        return results

    def input_size(self, image_size: tuple[int, int], resize: str = "transformers") -> tuple[int, int] | None:
        """``(w, h)`` the image is resized to with ``resize="mmdet"``; ``None``: the processor decides."""
        if resize == "transformers":
            return None
        size = self.processor.image_processor.size
        edges = (size["shortest_edge"], size["longest_edge"]) if "shortest_edge" in size else (800, 1333)
        return mmdet_fix_scale_size(image_size, edges)

    @torch.inference_mode()
    def _forward(self, image: Image.Image, captions: list[str], resize: str = "transformers"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.input_size(image.size, resize)
        exact = {} if target is None else {"size": {"height": target[1], "width": target[0]}}
        pixels = self.processor.image_processor(images=image, return_tensors="pt", **exact)
        text = self.processor.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        batch = len(captions)
        device, dtype = self.device, next(self.model.parameters()).dtype
        inputs = {key: value.to(device) for key, value in text.items()}
        inputs["pixel_values"] = pixels["pixel_values"].to(device, dtype).expand(batch, -1, -1, -1)
        if "pixel_mask" in pixels:
            inputs["pixel_mask"] = pixels["pixel_mask"].to(device).expand(batch, -1, -1)
        outputs = self.model(**inputs)
        return outputs.logits.cpu(), outputs.pred_boxes.float().cpu()


def mmdet_fix_scale_size(image_size: tuple[int, int], scale: tuple[int, int] = (800, 1333)) -> tuple[int, int]:
    """``(w, h)`` mmdetection's ``FixScaleResize(scale, keep_ratio=True)`` gives an image of ``image_size``:
    the largest factor keeping the short side within ``min(scale)`` and the long one within
    ``max(scale)``, each side rounded as ``int(side * factor + 0.5)`` (mmcv's ``rescale_size``)."""
    width, height = image_size
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _share_backbone_across_repeated_image(model) -> None:
    """Make the text-independent image backbone run once per image.

    Within a call, ``detect_many`` passes one image expanded along the batch (batch
    stride 0): the Swin backbone and its position embeddings are computed for the first
    row and copied to the others. Across calls, the last image's outputs are kept and
    reused when the next call's pixels are equal (SFA's router call on the target phrase,
    then its specialist call on the expression); the comparison is on the pixel values
    themselves, so an image changed in place is recomputed. This keeps one image's
    backbone features in memory. Batches of different images run as before. The
    instance's ``forward`` is wrapped, so weights and ``state_dict`` keys are untouched.
    """
    backbone = getattr(getattr(model, "model", None), "backbone", None)
    if backbone is None:  # an architecture without the Grounding DINO layout: leave it alone
        return
    backbone.forward = _BackboneOncePerImage(backbone.forward)


class _BackboneOncePerImage:
    def __init__(self, forward) -> None:
        self._forward = forward
        self._last = None  # (pixel_values, pixel_mask, outputs) of the last image, one tuple

    def __call__(self, pixel_values, pixel_mask):
        batch = pixel_values.shape[0]
        if batch > 1 and pixel_values.stride(0) != 0:  # several different images
            return self._forward(pixel_values, pixel_mask)
        pixels, mask = pixel_values[:1], pixel_mask[:1]
        last = self._last
        if last is not None and last[0].shape == pixels.shape and torch.equal(last[0], pixels) and torch.equal(
            last[1], mask
        ):
            features, positions = last[2]
        else:
            features, positions = self._forward(pixels, mask)
            self._last = (pixels, mask, (features, positions))

        def copy(tensor):  # copies, never views of the kept outputs: later layers may write in place
            return tensor.repeat(batch, *([1] * (tensor.dim() - 1)))

        return [(copy(feature), copy(m)) for feature, m in features], [copy(p) for p in positions]
