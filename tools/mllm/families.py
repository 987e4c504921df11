"""MLLM families: each one's grounding prompt and box convention, in one place.

(Over 400 lines on purpose: every family's box finder, writer and range checks sit side by
side, so that a new family is written against the others in one reading.)

=============  ==============================================  ===============================  ======================
family         answer                                          coordinates                      CRS option box
=============  ==============================================  ===============================  ======================
Qwen2-VL       ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``     integers 0..1000, relative       ``(x1,y1),(x2,y2)``
Qwen2.5-VL     ``[{"bbox_2d": [x1, y1, x2, y2], "label": ..}]``  pixels of the *resized* input  ``[x1, y1, x2, y2]``
Qwen3-VL       same JSON as Qwen2.5-VL                         0..1000, relative                ``[x1, y1, x2, y2]``
InternVL       ``<ref>..</ref><box>[[x1, y1, x2, y2]]</box>``  integers 0..1000, relative       ``[[x1, y1, x2, y2]]``
=============  ==============================================  ===============================  ======================

A CRS option is written in the family's own box language and coordinates, so a model reads
each candidate as it would write it; Qwen2-VL's is the authors' text exactly.

Sources: Qwen2-VL as in the paper's reference code (REFERENCE.md §1). Qwen2.5-VL: the
prompt follows its spatial-understanding cookbook ("Locate the top right brown cake,
output its bbox coordinates using JSON format."), which answers in absolute pixels of the
image after ``smart_resize``. Qwen3-VL: its ``cookbooks/2d_grounding.ipynb`` states "Qwen3-VL's
default coordinate system has been changed from the absolute coordinates used in
Qwen2.5-VL to relative coordinates ranging from 0 to 1000"; the prompt is the RefCOCO
prompt of the Qwen3-VL technical report (Appendix B), also used by evalscope and AISBench.

Parsing policy, the same for every family:

- Anything unusable raises ``ModelOutputError`` and nothing else, whatever the text.
- An inverted box (``x1 > x2`` or ``y1 > y2``) is *reordered*, as Qwen's own cookbook
  plotting code does: the model meant that rectangle, it only wrote the corners in
  another order.
- A coordinate outside the coordinate range by more than ``RANGE_TOLERANCE`` of its
  extent rejects the *whole answer*: it means the model used another convention (e.g.
  original-image pixels), so its other boxes are suspect too. Smaller overshoots are
  clipped. InternVL is read as its own RefCOCO evaluation reads it instead: any overshoot
  is clipped, and a box whose coordinates sum to less than 4 is in fractions of the image.
- A box of zero width or height is rejected.

Nothing here touches a torch model, so the OpenAI-compatible backend reuses the parsers
and ``box_token_confidence`` with log-probabilities returned by a server.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np

from prompts import render_prompt

from .. import boxes as box_ops
from ..detections import Detections
from ..errors import ModelOutputError, UserInputError

# How far (as a share of the coordinate extent) a coordinate may overshoot before the
# answer is rejected rather than clipped: 1% is 10 units on Qwen's 0..1000 grid.
RANGE_TOLERANCE = 0.01

RELATIVE_1000 = "relative_1000"
INPUT_PIXELS = "input_pixels"

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_POINT = rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)"
# The box tokens are optional: decoding with skip_special_tokens drops them.
_POINT_PAIR = re.compile(rf"{_POINT}\s*,?\s*{_POINT}")
_OBJECT_REF = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.DOTALL)
_FOUR_NUMBERS = rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]"
_BBOX_2D = re.compile(rf'"bbox_2d"\s*:\s*({_FOUR_NUMBERS})')
_BARE_LIST = re.compile(_FOUR_NUMBERS)
_REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)
_LABEL = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class WrittenBox:
    """A box as the model wrote it: native coordinates, where they are, what it named it."""

    coords: tuple[float, float, float, float]
    span: tuple[int, int]  # character span of the coordinate text, delimiters included
    label: str | None = None


@dataclass(frozen=True, eq=False)
class ParsedAnswer:
    """Boxes of a grounding answer in ``xyxy`` pixels of the original image.

    ``spans[i]`` is the character span of box ``i``'s coordinate text in the parsed
    answer (for ``box_token_confidence``); ``labels[i]`` the name the model gave it, if any.
    """

    boxes: np.ndarray
    spans: tuple[tuple[int, int], ...]
    labels: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.spans)

    def to_detections(
        self,
        confidence: "BoxConfidence | None" = None,
        default_label: str | None = None,
        raw: "BoxConfidence | None" = None,
    ) -> Detections:
        """Detections in answer order, scored by mean token probability.

        Without ``confidence`` (a server that returns no log-probabilities) every score is 1.
        ``raw``, the same measures from other logits (a local model's raw ones), goes into
        ``data`` as ``raw_mean_prob``, ``raw_prob_product``, ``raw_mean_logit``.
        Missing labels become ``default_label`` (typically the expression).
        """
        if confidence is None:
            scores, data = np.ones(len(self)), {}
        else:
            scores = confidence.mean_prob
            data = {"prob_product": confidence.prob_product, "mean_logit": confidence.mean_logit}
        if raw is not None:
            data.update({f"raw_{name}": values for name, values in raw._asdict().items()})
        labels = None
        if default_label is not None or any(label is not None for label in self.labels):
            labels = [label if label is not None else default_label or "" for label in self.labels]
        return Detections(self.boxes, scores, labels, data)


class BoxConfidence(NamedTuple):
    """Per-box confidences over the tokens of each box's coordinate text (arrays of shape ``(N,)``)."""

    mean_prob: np.ndarray
    prob_product: np.ndarray
    mean_logit: np.ndarray  # NaN where no logits were given


def box_token_confidence(
    token_texts: Sequence[str],
    token_logprobs: Sequence[float],
    token_logits: Sequence[float] | None,
    spans: Sequence[tuple[int, int]],
) -> BoxConfidence:
    """The reference's three confidences of each generated box.

    ``token_texts`` are the generated tokens whose concatenation is the parsed answer,
    ``token_logprobs`` the log-probability of each chosen token and ``token_logits`` its
    raw logit (``None`` when unavailable, e.g. from a server). A token counts for a box
    when it overlaps the box's coordinate ``span``.
    """
    lengths = np.array([len(text) for text in token_texts], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    logprobs = np.asarray(token_logprobs, dtype=np.float64).reshape(-1)
    logits = None if token_logits is None else np.asarray(token_logits, dtype=np.float64).reshape(-1)
    for name, values in (("token_logprobs", logprobs), ("token_logits", logits)):
        if values is not None and len(values) != len(lengths):
            raise ValueError(f"{len(lengths)} token texts but {len(values)} {name}")
    mean_prob, prob_product, mean_logit = [], [], []
    for start, end in spans:
        covering = (starts < end) & (ends > start)
        if not covering.any():
            answer_length = int(ends[-1]) if len(ends) else 0
            raise ValueError(f"no token covers characters {start}..{end} of a {answer_length}-character answer")
        chosen = logprobs[covering]
        mean_prob.append(np.exp(chosen).mean())
        prob_product.append(np.exp(chosen.sum()))
        mean_logit.append(logits[covering].mean() if logits is not None else np.nan)
    return BoxConfidence(*(np.array(values, dtype=np.float64) for values in (mean_prob, prob_product, mean_logit)))


def find_box_token_boxes(text: str) -> list[WrittenBox]:
    """Qwen2-VL boxes ``(x1,y1),(x2,y2)``, each labelled by the object reference just before it."""
    refs = list(_OBJECT_REF.finditer(text))
    found, previous_end = [], 0
    for match in _POINT_PAIR.finditer(text):
        label = None
        for ref in refs:  # the last reference between the previous box and this one
            if previous_end <= ref.start() and ref.end() <= match.start():
                label = ref.group(1).strip()
        found.append(WrittenBox(_numbers(match, range(1, 5)), match.span(), label))
        previous_end = match.end()
    return found


def find_ref_box_boxes(text: str) -> list[WrittenBox]:
    """InternVL boxes ``[x1, y1, x2, y2]`` (inside ``<box>[[...]]</box>``, the tags optional as
    decoding may drop them), each labelled by the ``<ref>`` just before it."""
    refs = list(_REF.finditer(text))
    found = []
    for match in _BARE_LIST.finditer(text):
        label = None
        for ref in refs:  # the last reference before this box
            if ref.end() <= match.start():
                label = ref.group(1).strip()
        found.append(WrittenBox(_numbers(match, range(1, 5)), match.span(), label))
    return found


def find_json_boxes(text: str) -> list[WrittenBox]:
    """``bbox_2d`` boxes of a (possibly fenced, possibly truncated) JSON answer.

    Scanning for the key instead of ``json.loads`` keeps each box's character span and
    still reads the complete boxes of an answer cut off by ``max_new_tokens``. An answer without any
    ``"bbox_2d"`` key may give bare ``[x1, y1, x2, y2]`` lists, which are read instead.
    """
    if '"bbox_2d"' in text:
        matches, number_groups, span_group = list(_BBOX_2D.finditer(text)), range(2, 6), 1
    else:
        matches, number_groups, span_group = list(_BARE_LIST.finditer(text)), range(1, 5), 0
    found = []
    for index, match in enumerate(matches):
        # The label lives in the same JSON object: between the "{" opening it and the "}"
        # closing it, never reaching into the neighbouring boxes.
        low = matches[index - 1].end() if index else 0
        high = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        opening = text.rfind("{", low, match.start())
        closing = text.find("}", match.end(), high)
        label = None
        if opening >= 0:
            label = _json_label(text[opening : closing if closing >= 0 else high])
        found.append(WrittenBox(_numbers(match, number_groups), match.span(span_group), label))
    return found


def write_point_pair(box: Sequence[int]) -> str:
    """Qwen2-VL's box text ``(x1,y1),(x2,y2)``."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"({x1},{y1}),({x2},{y2})"


def write_json_list(box: Sequence[int]) -> str:
    """The JSON list ``[x1, y1, x2, y2]`` of a ``bbox_2d`` answer."""
    return json.dumps([int(v) for v in box])


def write_nested_list(box: Sequence[int]) -> str:
    """InternVL's box text ``[[x1, y1, x2, y2]]`` (what it writes between ``<box>`` tags)."""
    return f"[{write_json_list(box)}]"


@dataclass(frozen=True)
class ModelFamily:
    """An MLLM generation: its grounding prompt, answer format and coordinate space."""

    name: str  # canonical key, e.g. "qwen2_5_vl"
    title: str  # as its authors write it, e.g. "Qwen2.5-VL"
    model_types: tuple[str, ...]  # transformers ``config.model_type`` values
    prompt_name: str  # template in prompts/
    patch_size: int | None  # Qwen's vision patch in pixels (resize factor patch_size * 2); None: no smart_resize
    coordinates: str  # RELATIVE_1000 or INPUT_PIXELS
    find_boxes: Callable[[str], list[WrittenBox]] = field(repr=False)
    write_box: Callable[[Sequence[int]], str] = field(repr=False)
    # A box whose four coordinates sum to less than this is written in fractions of the image
    # (0..1), as InternVL's own RefCOCO evaluation reads it; ``None``: never.
    fractions_below_sum: float | None = None
    # A coordinate beyond the range by more than RANGE_TOLERANCE rejects the answer; else it is clipped.
    rejects_overshoot: bool = True

    def grounding_prompt(self, expression: str, focus: str | None = None, prompts_dir: str | None = None) -> str:
        """The grounding question; with ``focus`` the target-focus sentence is appended."""
        prompt = render_prompt(self.prompt_name, prompts_dir, expression=expression)
        if focus:
            prompt += render_prompt("focus_suffix", prompts_dir, target=focus)
        return prompt

    @property
    def uses_smart_resize(self) -> bool:
        """Whether images are resized by Qwen's ``smart_resize`` (``qwen_vl_utils``) before the model sees them."""
        return self.patch_size is not None

    @property
    def needs_input_size(self) -> bool:
        """Whether boxes are written in pixels of the resized input (so its size must be known)."""
        return self.coordinates == INPUT_PIXELS

    def input_size(
        self,
        image_size: tuple[int, int],
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        patch_size: int | None = None,
    ) -> tuple[int, int]:
        """``(w, h)`` of the model input after Qwen's ``smart_resize`` (pixel budget defaults as
        in ``qwen_vl_utils``); what a server does to the image before the model sees it.
        ``patch_size`` overrides the family's (a checkpoint's processor may say otherwise)."""
        from qwen_vl_utils import smart_resize

        width, height = image_size
        if not (patch_size or self.uses_smart_resize):
            raise ValueError(f"{self.title} does not resize images with Qwen's smart_resize")
        factor = 2 * (patch_size or self.patch_size)
        try:
            new_height, new_width = smart_resize(height, width, factor=factor, min_pixels=min_pixels,
                                                 max_pixels=max_pixels)
        except (ValueError, AssertionError) as error:
            raise UserInputError(f"cannot resize a {width}x{height} image for {self.title}: {error}") from None
        return new_width, new_height

    def option_boxes(
        self, boxes, image_size: tuple[int, int], input_size: tuple[int, int] | None = None
    ) -> list[str]:
        """Pixel ``xyxy`` boxes of the original image as this family writes them (CRS options).

        Coordinates are rounded and clipped to the coordinate range; ``input_size`` (the
        resized input) is needed when the family answers in its pixels.
        """
        if self.needs_input_size:
            if input_size is None:
                raise ValueError(f"{self.title} reads boxes in pixels of the resized input: pass input_size")
            resized = box_ops.resize_boxes(boxes, image_size, input_size)
            native = np.round(box_ops.clip_boxes(resized, *input_size)).astype(np.int64)
        else:
            native = box_ops.pixels_to_qwen(boxes, *image_size)
        return [self.write_box(box) for box in native]

    def parse_answer(
        self, text: str | None, image_size: tuple[int, int], input_size: tuple[int, int] | None = None
    ) -> ParsedAnswer:
        """Boxes of a grounding answer in pixels of the original ``image_size`` ``(w, h)``.

        ``input_size`` ``(w, h)`` is the resized model input; Qwen2.5-VL needs it, the
        relative families ignore it. Raises ``ModelOutputError`` for any unusable ``text``.
        """
        if self.needs_input_size and input_size is None:
            raise ValueError(f"{self.title} answers in pixels of the resized input: pass input_size")
        written = self.find_boxes(text or "")
        if not written:
            raise ModelOutputError(f"no box in the {self.title} answer {_preview(text)}")
        if self.coordinates == INPUT_PIXELS:
            extent = input_size
        else:
            extent = (box_ops.QWEN_SCALE, box_ops.QWEN_SCALE)
        coords = np.array([box.coords for box in written], dtype=np.float64)
        if self.fractions_below_sum is not None:
            fractions = coords.sum(axis=1) < self.fractions_below_sum
            coords[fractions] *= np.array(extent * 2)
        native = _checked_boxes(coords, extent, text, self.rejects_overshoot)
        if self.coordinates == INPUT_PIXELS:
            pixels = box_ops.resize_boxes(native, input_size, image_size)
        else:
            pixels = box_ops.qwen_to_pixels(native, *image_size)
        return ParsedAnswer(
            box_ops.clip_boxes(pixels, *image_size),
            tuple(box.span for box in written),
            tuple(box.label for box in written),
        )


QWEN2_VL = ModelFamily(
    "qwen2_vl", "Qwen2-VL", ("qwen2_vl",), "qwen2_vl_ground", 14, RELATIVE_1000, find_box_token_boxes, write_point_pair
)
QWEN2_5_VL = ModelFamily(
    "qwen2_5_vl", "Qwen2.5-VL", ("qwen2_5_vl",), "qwen2_5_vl_ground", 14, INPUT_PIXELS, find_json_boxes,
    write_json_list,
)
QWEN3_VL = ModelFamily(
    "qwen3_vl", "Qwen3-VL", ("qwen3_vl", "qwen3_vl_moe"), "qwen3_vl_ground", 16, RELATIVE_1000, find_json_boxes,
    write_json_list,
)
# The -hf checkpoints load as "internvl"; the original remote-code ones (served by vLLM) say "internvl_chat".
# InternVL's answers are read as its own RefCOCO evaluation (internvl_chat/eval/refcoco) reads them:
# fractions when the coordinates sum to less than 4, never rejected for overshooting 0..1000.
INTERNVL = ModelFamily(
    "internvl", "InternVL", ("internvl", "internvl_chat"), "internvl_ground", None, RELATIVE_1000, find_ref_box_boxes,
    write_nested_list, fractions_below_sum=4.0, rejects_overshoot=False,
)
FAMILIES: dict[str, ModelFamily] = {
    family.name: family for family in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL, INTERNVL)
}


def get_family(name: str) -> ModelFamily:
    """The family called ``name``: ``"qwen2_vl"``, ``"Qwen2.5-VL"``, ``"qwen3-vl"``, ``"internvl"``, ..."""
    key = _squash(name)
    for family in FAMILIES.values():
        if key == _squash(family.name):
            return family
    raise UserInputError(f"unknown MLLM family {name!r}; known: {', '.join(f.title for f in FAMILIES.values())}")


def family_for_model(model_type_or_name: str) -> ModelFamily:
    """The family of a transformers ``model_type`` (``"qwen2_5_vl"``) or a model name
    (``"Qwen/Qwen3-VL-8B-Instruct"``, ``"qwen2.5-vl-72b-instruct"``, ``"OpenGVLab/InternVL3-8B-hf"``)."""
    key = _squash(model_type_or_name)
    for family in FAMILIES.values():
        if key in {_squash(model_type) for model_type in family.model_types}:
            return family
    # "qwen2vl" is not a substring of "qwen25vl", so the first hit is the right one;
    # "internvl" is in every InternVL name ("internvl25", "internvl38bhf", ...).
    for family in FAMILIES.values():
        if _squash(family.name) in key:
            return family
    raise UserInputError(
        f"{model_type_or_name!r} is not a supported MLLM; "
        f"supported: {', '.join(f.title for f in FAMILIES.values())}"
    )


def _checked_boxes(native: np.ndarray, extent: tuple[float, float], text: str, reject_overshoot: bool = True
                   ) -> np.ndarray:
    """Reorder inverted corners, reject out-of-range (or, without ``reject_overshoot``, non-finite)
    or empty boxes, clip overshoots."""
    width, height = extent
    boxes = box_ops.ordered_corners(native)
    limits = np.array([width, height, width, height], dtype=np.float64)
    overshoot = np.maximum(-boxes, boxes - limits)
    tolerance = RANGE_TOLERANCE * limits if reject_overshoot else np.inf
    outside = ~(overshoot <= tolerance) | ~np.isfinite(boxes)  # inf from absurdly long digit runs
    if outside.any():
        index = int(np.flatnonzero(outside.any(axis=1))[0])
        raise ModelOutputError(
            f"box {index + 1} {native[index].tolist()} lies outside the 0..{width:g} x 0..{height:g} "
            f"coordinate range in the answer {_preview(text)}"
        )
    boxes = box_ops.clip_boxes(boxes, width, height)
    empty = ~box_ops.is_valid(boxes)
    if empty.any():
        index = int(np.flatnonzero(empty)[0])
        raise ModelOutputError(f"box {index + 1} {native[index].tolist()} has no area in the answer {_preview(text)}")
    return boxes


def _numbers(match: re.Match, groups) -> tuple[float, float, float, float]:
    return tuple(float(match.group(group)) for group in groups)


def _json_label(region: str) -> str | None:
    match = _LABEL.search(region)
    if match is None:
        return None
    try:
        return json.loads(f'"{match.group(1)}"')
    except ValueError:  # a malformed escape: keep the text as written
        return match.group(1)


def _squash(name: str) -> str:
    # "Qwen2.5-VL", "qwen2_5_vl" and "qwen25vl" all become "qwen25vl".
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _preview(text: str | None, limit: int = 80) -> str:
    text = text or ""
    return repr(text if len(text) <= limit else text[:limit] + "...")
