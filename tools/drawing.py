"""Drawing detections onto an image for people to look at."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .detections import Detections

# Distinct, colour-blind-friendly outline colours (Okabe-Ito).
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167))


def draw_detections(
    image: Image.Image, detections: Detections, captions: Sequence[str] | None = None, width: int | None = None
) -> Image.Image:
    """A copy of ``image`` with each box outlined and captioned (default: its score).

    ``captions`` replaces the score text, one per box (e.g. option letters).
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = width or max(2, round(min(canvas.size) / 200))
    if captions is None:
        captions = [f"{score:.2f}" for score in detections.scores]
    for index, ((x1, y1, x2, y2), caption) in enumerate(zip(detections.boxes.tolist(), captions)):
        colour = PALETTE[index % len(PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        label_top = max(0, y1 - (bottom - top) - 4)
        draw.rectangle((x1, label_top, x1 + (right - left) + 4, label_top + (bottom - top) + 4), fill=colour)
        draw.text((x1 + 2, label_top + 2 - (top - y1)), caption, fill=(0, 0, 0), font=font)
    return canvas
