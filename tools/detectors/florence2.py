"""Florence-2 (``Florence2ForConditionalGeneration``) as the specialist, with its own scores.

Florence-2 writes boxes as text: a phrase, then four ``<loc_i>`` tokens per box (1000 bins per
axis, ``boxes.location_bins_to_pixels``). Two of its tasks serve as a detector:

- without ``focus``: ``<OPEN_VOCABULARY_DETECTION>`` on the whole text ("Locate {text} in the
  image."), every box it writes;
- with ``focus``: ``<CAPTION_TO_PHRASE_GROUNDING>`` on the whole text, which grounds each phrase
  of it; the boxes kept are those of the phrases that are the target's (the phrase found in the
  text overlaps the focus span, or, when the model rephrased it, shares a word with the target).
  The target's grounding, read with its context. Phrases on the processor's black list
  (``banned_grounding_tokens``: pronouns, "the image", ...) are dropped, as its post-processor does.

Florence-2 gives no scores. REX uses each box's decoding confidence: the mean probability of
its four location tokens under the scores greedy decoding ranked by (as ``QwenVL`` scores the
coordinate tokens of a box), so boxes come back best first and thresholds mean something.
Decoding is greedy (the model card uses 3 beams; a beam's tokens have no such probability).
"""

from __future__ import annotations

import re
import threading
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from .. import boxes as box_ops
from ..batching import one_call_at_a_time
from ..defaults import DEFAULT_FLORENCE2
from ..detections import Detections
from ..mllm.decoding import chosen_scores, stop_token_ids
from ..text import Span, check_text, neutralise_markup
from .base import focus_spans
from .loading import TransformersDetector

DETECTION_TASK = "<OPEN_VOCABULARY_DETECTION>"
GROUNDING_TASK = "<CAPTION_TO_PHRASE_GROUNDING>"
LOCATION_BINS = 1000
DEFAULT_MAX_NEW_TOKENS = 1024  # as the model card generates
_ARTICLES = {"a", "an", "the"}


class WrittenBox(NamedTuple):
    phrase: str  # the text written before the box (shared by consecutive boxes)
    bins: tuple[int, int, int, int]
    mean_prob: float  # mean probability of the four location tokens


class Florence2Detector(TransformersDetector):
    """A transformers Florence-2 checkpoint (``florence-community/Florence-2-large``, ...);
    see the module docstring."""

    model_types = ("florence2",)  # the checkpoints' config.model_type
    title = "Florence-2"
    default_checkpoint = DEFAULT_FLORENCE2
    auto_class = "AutoModelForImageTextToText"

    def __init__(self, model, processor, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_new_tokens = max_new_tokens
        vocabulary = self.tokenizer.get_vocab()
        self._location_ids = {vocabulary[f"<loc_{i}>"]: i for i in range(LOCATION_BINS) if f"<loc_{i}>" in vocabulary}
        if len(self._location_ids) != LOCATION_BINS:
            raise ValueError(f"a Florence-2 tokenizer has {LOCATION_BINS} <loc_i> tokens; "
                             f"this one has {len(self._location_ids)}")
        self._stop_ids = stop_token_ids(model.generation_config, self.tokenizer)
        self._lock = threading.RLock()  # one generate at a time: calls from a batch take turns

    def detect(self, image: Image.Image, text: str, focus: Span | None = None) -> Detections:
        """Boxes for ``text`` on ``image`` (with ``focus``: those of the target phrase), best first."""
        return self.detect_batch([image], [text], [focus])[0]

    def detect_many(
        self, image: Image.Image, texts: Sequence[str], focuses: Sequence[Span | None] | None = None
    ) -> list[Detections]:
        """Several texts on one image, generated as one batch."""
        return self.detect_batch([image] * len(texts), texts, focuses)

    @one_call_at_a_time
    def detect_batch(
        self, images: Sequence[Image.Image], texts: Sequence[str], focuses: Sequence[Span | None] | None = None
    ) -> list[Detections]:
        """One (image, text) pair per item, generated as one batch."""
        focuses = focus_spans(texts, focuses)
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        for text, focus in zip(texts, focuses):
            check_text(text, focus)
        # Markup in the text ("<OCR>", "<loc_5>") is Florence-2's own task and location tokens: neutralised.
        prompts = [(GROUNDING_TASK if focus is not None else DETECTION_TASK) + neutralise_markup(text.strip())
                   for text, focus in zip(texts, focuses)]
        answers = self._generate(list(images), prompts)
        results = []
        banned = getattr(getattr(self.processor, "post_processor", None), "banned_grounding_tokens", set())
        for image, text, focus, written in zip(images, texts, focuses, answers):
            if focus is not None:
                written = [box for box in written
                           if box.phrase not in banned and is_target_phrase(box.phrase, text, focus)]
            results.append(self._detections(written, image.size, text.strip()))
        return results

    def _detections(self, written: list[WrittenBox], image_size: tuple[int, int], text: str) -> Detections:
        if not written:
            return Detections.empty()
        pixels = box_ops.location_bins_to_pixels([box.bins for box in written], *image_size, num_bins=LOCATION_BINS)
        boxes = box_ops.clip_boxes(pixels, *image_size)
        labels = [box.phrase or text for box in written]
        detections = Detections(boxes, [box.mean_prob for box in written], labels)
        return detections[box_ops.is_valid(detections.boxes)].sorted()

    @torch.inference_mode()
    def _generate(self, images: list[Image.Image], prompts: list[str]) -> list[list[WrittenBox]]:
        inputs = self.processor(text=prompts, images=images, padding=True, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {name: value.to(self.device, dtype) if name == "pixel_values" else value.to(self.device)
                  for name, value in inputs.items()}
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                     return_dict_in_generate=True, output_scores=True)
        # An encoder-decoder's sequences start with the decoder start token; the scores follow it.
        new_tokens = output.sequences[:, -len(output.scores):]
        _, logprobs = chosen_scores(output.scores, new_tokens)
        return [self._read(row_tokens, logprobs[row]) for row, row_tokens in enumerate(new_tokens.tolist())]

    def _read(self, token_ids: list[int], logprobs: np.ndarray) -> list[WrittenBox]:
        """The boxes of one answer: runs of four location tokens, each after the phrase it grounds."""
        written: list[WrittenBox] = []
        phrase_ids: list[int] = []
        phrase, run = "", []
        special = set(self.tokenizer.all_special_ids)
        for position, token in enumerate(token_ids):
            if token in self._stop_ids:
                break
            if token in self._location_ids:
                if phrase_ids:  # text since the last box: a new phrase
                    phrase = _clean_phrase(self.tokenizer.decode(phrase_ids, skip_special_tokens=True))
                    phrase_ids = []
                run.append(position)
                if len(run) == 4:
                    bins = tuple(self._location_ids[token_ids[p]] for p in run)
                    written.append(WrittenBox(phrase, bins, float(np.exp(logprobs[run]).mean())))
                    run = []
            else:
                run = []  # a box is four location tokens in a row
                if token not in special:
                    phrase_ids.append(token)
        return written



def is_target_phrase(phrase: str, text: str, focus: Span) -> bool:
    """Whether a grounded ``phrase`` of ``text`` is the target at ``focus``: where the phrase occurs
    in the text, it overlaps the focus span; a phrase the text does not contain counts when it
    shares a word (articles aside) with the target."""
    start, end = focus
    found = [match.span() for match in re.finditer(re.escape(phrase.strip()), text, re.IGNORECASE)] if phrase else []
    if found:
        return any(s < end and e > start for s, e in found)
    target_words = _words(text[start:end])
    return bool(target_words & _words(phrase))


def _words(text: str) -> set[str]:
    return {word for word in re.findall(r"\w+", text.lower()) if word not in _ARTICLES}


def _clean_phrase(text: str) -> str:
    # Florence-2's post-processor drops its grounding markers and non-ASCII characters.
    return text.replace("<ground>", "").replace("<obj>", "").encode("ascii", "ignore").decode("ascii").strip()
