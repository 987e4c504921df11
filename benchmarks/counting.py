"""FLOPs of one detector forward and of the MLLM's vision, prefill and decode steps, on ``meta``.

Counted with ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add of
every matmul, linear, convolution and attention product (``scaled_dot_product_attention``
included). Softmax, normalisation, activations, element-wise ops, embedding look-ups and
the bilinear sampling of deformable attention (``grid_sample``) are not counted, as is
usual for FLOP figures. On ``meta``, attention
decomposes into matmuls and is counted in full (``QK^T`` and ``AV`` over every key, as
FLOP figures assume); note that on a real CPU run FlopCounterMode cannot see inside the
fused attention kernel, so real CPU counts need eager attention to compare.

Meta tensors have shapes but no values, so three data-dependent spots are worked around:

- transformers' runtime sanity checks read tensor values (``.item()``): they are switched
  off while counting (``TRANSFORMERS_DISABLE_TORCH_CHECK=1``, a documented switch);
- the Qwen VL forward derives token positions and image splits from token ids and the
  image grid (``.tolist()``, ``masked_scatter``): the vision tower and the language model
  are counted separately instead, the vision tower with its attention boundaries
  (``cu_seqlens``, Qwen2.5-VL's windows) precomputed from the real grid on the CPU by
  transformers' own ``vision_utils``. ``tests/test_benchmarks.py`` checks that these parts
  add up to the count of a real full forward (and of ``generate``) on a tiny model;
- decoding runs the language model one token at a time on the ``meta`` KV cache left by the
  prefill, exactly as ``generate`` does (so each step attends to the whole cache), and only
  the last position goes through the LM head, as in ``generate`` and ``QwenVL.select``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

META = torch.device("meta")


@contextmanager
def _value_checks_off() -> Iterator[None]:
    """Switch off transformers' value checks (``torch_compilable_check``), which meta tensors cannot answer."""
    previous = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"]
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = previous


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of the matmul-like operations ``run()`` executes."""
    return count_flops_by_module(run)["Global"]


def count_flops_by_module(run: Callable[[], object]) -> dict[str, int]:
    """FLOPs of ``run()`` per module path (``"Model.model.backbone"``), the total under ``"Global"``."""
    counter = FlopCounterMode(display=False)
    with _value_checks_off(), torch.inference_mode(), counter:
        run()
    return {module: int(sum(by_op.values())) for module, by_op in counter.get_flop_counts().items()}


class DetectorForward(NamedTuple):
    total: int
    backbone: int  # the image backbone alone: it does not depend on the text


def detector_flops(model, input_size: tuple[int, int], text_tokens: int) -> DetectorForward:
    """One (MM-)Grounding-DINO forward on an ``input_size`` ``(h, w)`` image and ``text_tokens`` tokens."""
    height, width = input_size
    device = next(model.parameters()).device
    with torch.device(device):
        inputs = dict(
            pixel_values=torch.zeros(1, 3, height, width),
            pixel_mask=torch.ones(1, height, width, dtype=torch.long),
            input_ids=torch.zeros(1, text_tokens, dtype=torch.long),
            attention_mask=torch.ones(1, text_tokens, dtype=torch.long),
            token_type_ids=torch.zeros(1, text_tokens, dtype=torch.long),
        )
    by_module = count_flops_by_module(lambda: model(**inputs))
    backbone = sum(flops for module, flops in by_module.items() if module.endswith(".model.backbone"))
    return DetectorForward(by_module["Global"], backbone)


def vision_flops(model, grid_thw: tuple[int, int, int]) -> int:
    """The vision tower (patch embedding, blocks, merger) of a Qwen VL on one image of ``grid_thw`` patches."""
    from transformers import vision_utils

    visual = model.model.visual
    config = visual.config
    grid = torch.tensor([grid_thw])
    patches = grid_thw[0] * grid_thw[1] * grid_thw[2]
    patch_values = config.in_channels * config.temporal_patch_size * config.patch_size**2
    # Index tensors only need shapes (meta); attention boundaries are sliced with .tolist(),
    # so they stay real CPU tensors.
    precomputed = {
        "position_ids": vision_utils.get_vision_position_ids(grid, visual.spatial_merge_size).to(META),
        "cu_seqlens": vision_utils.get_vision_cu_seqlens(grid),
    }
    if getattr(config, "window_size", None):  # Qwen2.5-VL: windowed attention in most blocks
        window_index, cu_window_seqlens = vision_utils.get_vision_window_index(
            grid, visual.spatial_merge_size, config.window_size, config.patch_size
        )
        precomputed.update(window_index=window_index.to(META), cu_window_seqlens=cu_window_seqlens)
    pixel_values = torch.zeros(patches, patch_values, device=META)
    return count_flops(lambda: visual(pixel_values, grid_thw=grid, **precomputed))


class LanguageModelCounter:
    """Prefill and decode FLOPs of a Qwen VL's language model, keeping the KV cache in between."""

    def __init__(self, model) -> None:
        self.model = model
        self.hidden_size = model.config.text_config.hidden_size
        self.cache = None

    def prefill(self, tokens: int, past: int = 0) -> int:
        """FLOPs of the forward over ``tokens`` input tokens and the LM head on the last one, after
        ``past`` tokens already in the KV cache (a cached prompt prefix: attended to, not recomputed)."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config.text_config)
        if past:
            self._step(past)  # fills the cache; not counted
        return count_flops(lambda: self._step(tokens))

    def decode(self, steps: int) -> int:
        """FLOPs of ``steps`` one-token forwards, each attending to the cache the previous ones grew."""
        if self.cache is None:
            raise RuntimeError("decode needs a prefill first")
        return sum(count_flops(lambda: self._step(1)) for _ in range(steps))

    def _step(self, tokens: int) -> None:
        embeddings = torch.zeros(1, tokens, self.hidden_size, device=META)
        # M-RoPE positions (temporal, height, width); their values do not change the FLOPs.
        positions = torch.zeros(3, 1, tokens, dtype=torch.long, device=META)
        output = self.model.model.language_model(
            inputs_embeds=embeddings, position_ids=positions, cache=self.cache, use_cache=True
        )
        self.model.lm_head(output.last_hidden_state[:, -1:])
