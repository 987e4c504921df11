"""InternVL (2.5, 3, 3.5) run locally with transformers' native classes.

``InternVL`` is a ``LocalVLM`` (grounding, CRS and chat live there, ``local.py``) for the
``-hf`` checkpoints (``OpenGVLab/InternVL3-8B-hf``, ``OpenGVLab/InternVL3_5-8B-HF``, ...),
which load as ``InternVLForConditionalGeneration`` with an ``InternVLProcessor``. The
processor cuts an image into at most ``max_patches`` square tiles plus a thumbnail; the
model answers in 0..1000 coordinates of the whole original image (``families.INTERNVL``),
so no resize has to be undone. The original remote-code checkpoints (``OpenGVLab/InternVL2_5-8B``)
are reached through a vLLM server instead (``OpenAICompatibleMLLM(family="internvl")``).
"""

from __future__ import annotations

from PIL import Image

from ..defaults import DEFAULT_INTERNVL, INTERNVL_TILES
from ..errors import UserInputError
from .families import INTERNVL, ModelFamily, family_for_model
from .local import LocalVLM


class InternVL(LocalVLM):
    """An InternVL ``-hf`` checkpoint loaded with transformers (``InternVL.from_pretrained(...)``).

    ``max_patches`` caps the tiles an image is cut into (default ``INTERNVL_TILES``, 6: what
    InternVL's own RefCOCO evaluation uses, where the released processors say 12); fewer tiles
    cost less memory and see less detail.
    """

    kind = "InternVL"

    def __init__(self, model, processor, *, max_patches: int | None = None, **options) -> None:
        image_processor = processor.image_processor
        self.max_patches = int(max_patches or INTERNVL_TILES)
        if self.max_patches < 1:
            raise UserInputError(f"max_patches must be at least 1, got {self.max_patches}")
        self.min_patches = min(int(getattr(image_processor, "min_patches", None) or 1), self.max_patches)
        size = image_processor.size
        self.tile_size = (int(_read(size, "width")), int(_read(size, "height")))
        super().__init__(model, processor, **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_INTERNVL, **options) -> "InternVL":
        """Load an InternVL ``-hf`` checkpoint; the options are ``LocalVLM.from_pretrained``'s plus
        ``max_patches``."""
        return super().from_pretrained(name_or_path, **options)

    @classmethod
    def _family_of(cls, config) -> ModelFamily:
        family = family_for_model(config.model_type)
        if family is not INTERNVL:
            raise UserInputError(f"{config.model_type!r} is a {family.title} checkpoint, not an InternVL one")
        return family

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` of the tile grid an image of ``image_size`` is cut into (one tile when it is not cut)."""
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

        tile_width, tile_height = self.tile_size
        if self.max_patches <= 1:
            return tile_width, tile_height
        width, height = image_size
        columns, rows = get_optimal_tiled_canvas((height, width), (tile_height, tile_width), self.min_patches,
                                                 self.max_patches)
        return columns * tile_width, rows * tile_height

    def _memory_hint(self) -> str:
        return f"lower max_patches (now {self.max_patches})"

    def _conversation(self, image: Image.Image, text: str) -> list[dict]:
        """One user turn: the image, then the text (the chat template writes the image placeholder)."""
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]

    def _encode(self, conversations: list[list[dict]]):
        """Chat template + tiling; returns model inputs and each image's tile-grid ``(w, h)``."""
        texts = [self._prompt_text(conversation) for conversation in conversations]
        images = [item["image"] for conversation in conversations for message in conversation
                  if not isinstance(message["content"], str)
                  for item in message["content"] if item.get("type") == "image"]
        if not images:
            return self.processor(text=texts, padding=True, return_tensors="pt").to(self.device), []
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt",
                                crop_to_patches=self.max_patches > 1, min_patches=self.min_patches,
                                max_patches=self.max_patches)
        return inputs.to(self.device), [self.input_size(image.size) for image in images]

    def __repr__(self) -> str:
        return f"InternVL({self.name!r}, device={self.device}, max_patches={self.max_patches})"


def _read(size, key: str):
    return size[key] if isinstance(size, dict) else getattr(size, key)
