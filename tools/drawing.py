"""Drawing detections onto an image: for people to look at, and for Set-of-Mark prompts."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .detections import Detections

# Distinct, colour-blind-friendly outline colours (Okabe-Ito).
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167))


def draw_detections(
    image: Image.Image,
    detections: Detections,
    captions: Sequence[str] | None = None,
    *,
    width: int | None = None,
    palette: Sequence[tuple[int, int, int]] = PALETTE,
    font_size: int | None = None,
    captions_inside: bool = False,
) -> Image.Image:
    """A copy of ``image`` with each box outlined and captioned (default: its score).

    ``captions`` replaces the score text, one per box (e.g. option letters); they sit on a
    filled label above each box, or inside its top-left corner with ``captions_inside``.
    Line width and font size scale with the image unless given.
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_size) if font_size else ImageFont.load_default()
    line = width or max(2, round(min(canvas.size) / 200))
    if captions is None:
        captions = [f"{score:.2f}" for score in detections.scores]
    for index, ((x1, y1, x2, y2), caption) in enumerate(zip(detections.boxes.tolist(), captions)):
        colour = palette[index % len(palette)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left, bottom - top
        if captions_inside:
            label_x, label_y = x1 + line, y1 + line
        else:
            label_x, label_y = x1, max(0, y1 - text_h - 4)
        draw.rectangle((label_x, label_y, label_x + text_w + 4, label_y + text_h + 4), fill=colour)
        draw.text((label_x + 2 - left, label_y + 2 - top), caption, fill=(0, 0, 0), font=font)
    return canvas
