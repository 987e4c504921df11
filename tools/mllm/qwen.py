"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL run locally with transformers.

``QwenVL`` is a ``LocalVLM`` (grounding, CRS and chat live there, ``local.py``) whose images
are resized by ``qwen_vl_utils`` within a pixel budget (``min_pixels``, ``max_pixels``), so
the size the model sees, and with it Qwen2.5-VL's pixel coordinates, is known exactly.
"""

from __future__ import annotations

import warnings

import torch
from PIL import Image

from ..defaults import DEFAULT_MLLM
from ..errors import UserInputError
from .families import QWEN2_VL, ModelFamily, family_for_model
from .local import DEFAULT_MAX_NEW_TOKENS, GroundingOutput, LocalVLM

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "GroundingOutput", "QwenVL", "pixel_budget"]


class QwenVL(LocalVLM):
    """A Qwen VL checkpoint loaded with transformers (``QwenVL.from_pretrained(...)``).

    ``min_pixels`` / ``max_pixels`` bound the resized image (default: the checkpoint's
    processor settings).
    """

    kind = "Qwen VL"

    def __init__(self, model, processor, *, min_pixels: int | None = None, max_pixels: int | None = None,
                 **options) -> None:
        image_processor = processor.image_processor
        family = options.get("family") or _qwen_family(model.config.model_type)
        self.patch_size = int(getattr(image_processor, "patch_size", None) or family.patch_size)
        default_min, default_max = pixel_budget(image_processor)
        self.min_pixels = int(min_pixels or default_min or 0)
        self.max_pixels = int(max_pixels or default_max or 0)
        if not 0 < self.min_pixels <= self.max_pixels:
            raise UserInputError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        super().__init__(model, processor, **{**options, "family": family})

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MLLM, **options) -> "QwenVL":
        """Load a Qwen VL checkpoint; the options are ``LocalVLM.from_pretrained``'s plus
        ``min_pixels`` and ``max_pixels``."""
        return super().from_pretrained(name_or_path, **options)

    @classmethod
    def _family_of(cls, config) -> ModelFamily:
        return _qwen_family(config.model_type)

    @classmethod
    def _check_dtype(cls, family: ModelFamily, dtype: torch.dtype) -> None:
        if family is QWEN2_VL and dtype == torch.float16:
            warnings.warn("Qwen2-VL in float16 is known to overflow and write garbage; use bf16 (or fp32)",
                          stacklevel=4)

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` the model sees an image of ``image_size`` at, within this model's pixel budget."""
        return self.family.input_size(image_size, self.min_pixels, self.max_pixels, self.patch_size)

    def _memory_hint(self) -> str:
        return f"lower max_pixels (now {self.max_pixels})"

    # M-RoPE (Qwen2-VL paper, the models' get_rope_index): the image's tokens sit on a (t, h, w)
    # grid of merged patches, and the text after it continues, equal on all three axes, at the
    # grid's largest extent.

    def _prefix_pass_positions(self, prefix) -> dict:
        return {}  # the model places the image itself

    def _positions_after(self, prefix) -> torch.Tensor:
        """Each row's real tokens, its image's tokens replaced by the image's extent (one image per row)."""
        grids = prefix["image_grid_thw"]
        merge = int(getattr(self.processor.image_processor, "merge_size", None) or 2)
        image_tokens = grids.prod(-1) // merge**2
        extent = torch.maximum(grids[:, 1], grids[:, 2]) // merge
        return prefix["attention_mask"].sum(-1) - image_tokens + extent

    def _continuation_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.unsqueeze(0).expand(3, -1, -1)

    def _conversation(self, image: Image.Image, text: str) -> list[dict]:
        """One user turn: the image (resized within our pixel budget by qwen_vl_utils), then the text."""
        image_item = {"type": "image", "image": image, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        return [{"role": "user", "content": [image_item, {"type": "text", "text": text}]}]

    def _encode(self, conversations: list[list[dict]]):
        """Chat template + vision preprocessing; returns model inputs and each image's resized ``(w, h)``."""
        from qwen_vl_utils import process_vision_info

        texts = [self._prompt_text(conversation) for conversation in conversations]
        images, _ = process_vision_info(conversations, image_patch_size=self.patch_size)
        if images is None:
            return self.processor(text=texts, padding=True, return_tensors="pt").to(self.device), []
        # qwen_vl_utils already resized within our pixel budget; resizing again would apply
        # the processor's own budget instead and move the coordinates of Qwen2.5-VL answers.
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt", do_resize=False)
        return inputs.to(self.device), [image.size for image in images]

    def __repr__(self) -> str:
        return f"QwenVL({self.name!r}, family={self.family.title}, device={self.device}, max_pixels={self.max_pixels})"


def _qwen_family(model_type: str) -> ModelFamily:
    family = family_for_model(model_type)
    if not family.uses_smart_resize:
        raise UserInputError(f"{model_type!r} is a {family.title} checkpoint, not a Qwen VL one")
    return family


def pixel_budget(image_processor) -> tuple[int | None, int | None]:
    """The processor's (min_pixels, max_pixels): transformers 5 keeps them in ``size``."""
    size = getattr(image_processor, "size", None) or {}
    read = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    low = read("shortest_edge") or getattr(image_processor, "min_pixels", None)
    high = read("longest_edge") or getattr(image_processor, "max_pixels", None)
    return low, high
