"""Box maths: the one place where box formats are converted and compared.

Every function takes and returns ``numpy`` arrays of shape ``(N, 4)`` (or ``(4,)``
for a single box where noted) in float64, so results do not depend on the caller's
dtype. Pixel boxes are ``xyxy`` with the origin at the top-left corner; ``x2``/``y2``
are exclusive edges, so a box covering the whole image is ``(0, 0, width, height)``.
IoU, generalized IoU and NMS delegate to ``torchvision.ops`` (imported when first needed:
readers, scorers and the command line use this module without paying for torch);
``opencv_nms`` reproduces, in numpy, how the authors' scripts call OpenCV's NMS (see there).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

# Qwen2-VL writes coordinates as integers normalised to 0..1000.
QWEN_SCALE = 1000


def as_boxes(boxes: np.ndarray | Sequence[Sequence[float]] | torch.Tensor) -> np.ndarray:
    """Return ``boxes`` as a float64 ``(N, 4)`` array (an empty input gives ``(0, 4)``)."""
    torch = sys.modules.get("torch")  # without torch imported, nothing is a tensor
    if torch is not None and isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {array.shape}")
    return array


def xywh_to_xyxy(boxes) -> np.ndarray:
    """COCO ``(x, y, width, height)`` to ``(x1, y1, x2, y2)``."""
    b = as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_xywh(boxes) -> np.ndarray:
    """``(x1, y1, x2, y2)`` to COCO ``(x, y, width, height)``."""
    b = as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def cxcywh_to_xyxy(boxes) -> np.ndarray:
    """Centre-size ``(cx, cy, w, h)`` (DETR-style heads) to ``(x1, y1, x2, y2)``."""
    b = as_boxes(boxes)
    half = b[:, 2:] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def scale_boxes(boxes, width: float, height: float) -> np.ndarray:
    """Multiply x coordinates by ``width`` and y coordinates by ``height``.

    Turns boxes relative to the image (0..1) into pixels; the inverse is
    ``scale_boxes(boxes, 1 / width, 1 / height)``.
    """
    return as_boxes(boxes) * np.array([width, height, width, height], dtype=np.float64)


def pixels_to_qwen(boxes, width: float, height: float) -> np.ndarray:
    """Pixel ``xyxy`` boxes to Qwen2-VL integers in 0..1000: ``round(v / size * 1000)``.

    Values are clipped to 0..1000 so a box that overhangs the image still gives
    coordinates the model was trained on. Returns an ``int64`` array.
    """
    _check_size(width, height)
    # (v / size) * 1000 in this order, as the reference computes it: v * (1000 / size) rounds
    # differently where the product lands on .5 (both round half to even, like Python's round).
    relative = (as_boxes(boxes) / np.array([width, height, width, height], dtype=np.float64)) * QWEN_SCALE
    return np.clip(np.round(relative), 0, QWEN_SCALE).astype(np.int64)


def qwen_to_pixels(boxes, width: float, height: float) -> np.ndarray:
    """Qwen2-VL 0..1000 coordinates back to pixel ``xyxy`` boxes."""
    _check_size(width, height)
    return scale_boxes(boxes, width / QWEN_SCALE, height / QWEN_SCALE)


def resize_boxes(boxes, from_size: tuple[float, float], to_size: tuple[float, float]) -> np.ndarray:
    """Rescale pixel boxes from an image of ``from_size`` ``(w, h)`` to one of ``to_size``.

    Qwen2.5-VL answers in pixels of the *resized* model input; this maps them back.
    """
    _check_size(*from_size)
    _check_size(*to_size)
    return scale_boxes(boxes, to_size[0] / from_size[0], to_size[1] / from_size[1])


def padded_square_to_pixels(boxes, width: float, height: float) -> np.ndarray:
    """Relative ``(cx, cy, w, h)`` boxes of an image padded (right and bottom) to a square, as
    OWLv2 sees it, to ``xyxy`` pixels of the ``width`` x ``height`` image (not clipped)."""
    _check_size(width, height)
    side = max(width, height)
    return scale_boxes(cxcywh_to_xyxy(boxes), side, side)


def location_bins_to_pixels(bins, width: float, height: float, num_bins: int = 1000) -> np.ndarray:
    """Florence-2's ``<loc_i>`` bins (0..num_bins-1 per axis) to ``xyxy`` pixels: each bin's centre,
    ``(i + 0.5) * size / num_bins``, truncated to an integer as its post-processor does."""
    _check_size(width, height)
    return np.floor(scale_boxes(as_boxes(bins) + 0.5, width / num_bins, height / num_bins))


def clip_boxes(boxes, width: float, height: float) -> np.ndarray:
    """Clip boxes to the image ``[0, width] x [0, height]``."""
    b = as_boxes(boxes).copy()
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    return b


def ordered_corners(boxes) -> np.ndarray:
    """``boxes`` with each box's corners put in ``x1 <= x2``, ``y1 <= y2`` order (the rectangle meant)."""
    b = as_boxes(boxes)
    return np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)


def box_area(boxes) -> np.ndarray:
    """Area of each box; inverted or degenerate boxes have area 0."""
    b = as_boxes(boxes)
    return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)


def is_valid(boxes) -> np.ndarray:
    """Boolean mask of boxes with finite coordinates and ``x2 > x1``, ``y2 > y1``."""
    b = as_boxes(boxes)
    return np.isfinite(b).all(axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise IoU, shape ``(len(a), len(b))``: ``torchvision.ops.box_iou``'s arithmetic, in numpy
    (the evaluators' numbers, bit for bit, without a torch call per sample)."""
    inter, union = _inter_union(as_boxes(boxes_a), as_boxes(boxes_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def generalized_box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise generalized IoU (in -1..1), shape ``(len(a), len(b))``; used by the GREC metric.
    ``torchvision.ops.generalized_box_iou``'s arithmetic, in numpy."""
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    inter, union = _inter_union(a, b)
    top_left = np.minimum(a[:, None, :2], b[:, :2])
    bottom_right = np.maximum(a[:, None, 2:], b[:, 2:])
    enclosing = np.clip(bottom_right - top_left, 0, None)
    area = enclosing[..., 0] * enclosing[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union - (area - union) / area


def _inter_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union areas of every pair, as torchvision's ``_box_inter_union`` computes them."""
    top_left = np.maximum(a[:, None, :2], b[:, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[:, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None)
    inter = overlap[..., 0] * overlap[..., 1]
    # torchvision's box_area: inverted corners give negative areas, not 0 as ``box_area`` does.
    area_a, area_b = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter, area_a[:, None] + area_b - inter


def nms(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    Ties in score are broken by input order (the earlier box wins), so the result is
    deterministic, unlike ``torchvision.ops.nms`` whose sort is not stable.
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    import torch
    import torchvision.ops

    order = np.argsort(-s, kind="stable")
    # Strictly decreasing stand-in scores make torchvision's own ordering follow ours.
    rank_scores = torch.arange(len(order), 0, -1, dtype=torch.float64)
    kept = torchvision.ops.nms(torch.tensor(b[order]), rank_scores, float(iou_threshold))
    return order[np.sort(kept.numpy())]


def opencv_nms(boxes, scores, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """``cv2.dnn.NMSBoxes(boxes, scores, score_threshold, iou_threshold)`` on ``xyxy`` boxes, as the
    authors' routing and CRS scripts call it; indices of the kept boxes, best first.

    OpenCV reads each box as ``(x, y, width, height)``, so ``(x1, y1, x2, y2)`` is taken for the
    rectangle ``(x1, y1) .. (x1 + x2, y1 + y2)`` and overlaps are computed on those. As in
    OpenCV's ``NMSFast_``: scores are float32; only scores strictly above ``score_threshold``
    take part; they are visited in descending score order (a stable sort, so ties keep input
    order); a box is dropped when its overlap (``1 - jaccardDistance``, computed in float64 and
    compared as float32) with any kept box exceeds ``iou_threshold``. Two empty rectangles
    overlap fully, as in OpenCV. The library's own NMS is :func:`nms` (true IoU).
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    # OpenCV's rectangles: the corners the misread (x, y, w, h) describes.
    rects = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    areas = (b[:, 2] * b[:, 3]).clip(min=0)
    candidates = np.flatnonzero(s > np.float32(score_threshold))
    order = candidates[np.argsort(-s[candidates], kind="stable")]
    threshold = np.float32(iou_threshold)
    kept: list[int] = []
    for index in order:
        if kept:
            others = np.array(kept)
            width = np.minimum(rects[others, 2], rects[index, 2]) - np.maximum(rects[others, 0], rects[index, 0])
            height = np.minimum(rects[others, 3], rects[index, 3]) - np.maximum(rects[others, 1], rects[index, 1])
            empty = (width <= 0) | (height <= 0) | (areas[others] <= 0) | (areas[index] <= 0)
            intersection = np.where(empty, 0.0, width * height)
            total = areas[others] + areas[index]
            with np.errstate(divide="ignore", invalid="ignore"):
                overlap = np.where(total <= np.finfo(np.float64).eps, 1.0, intersection / (total - intersection))
            if (overlap.astype(np.float32) > threshold).any():
                continue
        kept.append(int(index))
    return np.array(kept, dtype=np.int64)


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
