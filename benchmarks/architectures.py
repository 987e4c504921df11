"""The released detector and MLLM architectures, rebuilt from their published configuration values.

Nothing is downloaded: each spec below writes out the values of the checkpoint's
``config.json`` on the Hugging Face Hub, and ``build_*`` turns it into the real
transformers model class, on the ``meta`` device by default (shapes only, no memory,
no weights), which is all FLOP counting needs. The wall-time benchmark builds a
smaller spec on a real device with random weights.

Sources of the values:

- MM-Grounding-DINO: transformers' ``convert_mm_grounding_dino_to_hf.py``, which wrote the
  ``openmmlab-community/mm_grounding_dino_*`` checkpoints: Swin-T (embed 96, depths 2-2-6-2,
  heads 3-6-12-24, window 7, 4 feature levels) or Swin-L (embed 192, depths 2-2-18-2,
  heads 6-12-24-48, window 12, stage1..stage4 out, 5 feature levels); everything else
  the config defaults written out below (BERT-base text encoder, d_model 256, 900
  queries, 6 encoder + 6 decoder layers, FFN 2048, 8 heads, 4 sampling points, 256
  text tokens).
- Qwen2-VL-2B / -7B-Instruct and Qwen2.5-VL-7B-Instruct: their ``config.json`` (text and
  vision sizes) and ``preprocessor_config.json`` (min_pixels 3136, max_pixels 12845056).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from tools.mllm.families import QWEN2_5_VL, QWEN2_VL, ModelFamily

# Qwen VL image budget of the released preprocessor configs: 4 to 16384 tokens of 28x28 px.
QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 16384 * 28 * 28
# Every released Qwen2/2.5-VL merges 2x2 patches into one LLM token and repeats an image twice in time.
SPATIAL_MERGE = 2
TEMPORAL_PATCH = 2

# BERT-base-uncased, the text encoder of every (MM-)Grounding-DINO checkpoint.
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)
# The detection transformer shared by MM-GDINO tiny, base and large.
GROUNDING_DINO_TRANSFORMER = dict(d_model=256, num_queries=900, encoder_layers=6, decoder_layers=6,
                                  encoder_ffn_dim=2048, decoder_ffn_dim=2048, encoder_attention_heads=8,
                                  decoder_attention_heads=8, encoder_n_points=4, decoder_n_points=4,
                                  max_text_len=256, two_stage=True)


@dataclass(frozen=True)
class DetectorSpec:
    """An MM-Grounding-DINO checkpoint: its Swin backbone and feature levels, the rest shared."""

    name: str
    hub_id: str
    swin: dict
    num_feature_levels: int
    text: dict = field(default_factory=lambda: dict(BERT_BASE))
    transformer: dict = field(default_factory=lambda: dict(GROUNDING_DINO_TRANSFORMER))


@dataclass(frozen=True)
class MllmSpec:
    """A Qwen VL checkpoint: its family (prompt, answer format, patch size) and model sizes."""

    name: str
    hub_id: str
    family: ModelFamily
    text: dict  # the text_config values
    vision: dict  # the vision_config values
    tie_word_embeddings: bool
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS


MM_GDINO_TINY = DetectorSpec(
    "MM-GDINO-T", "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
    swin=dict(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
              out_features=["stage2", "stage3", "stage4"]),
    num_feature_levels=4,
)
MM_GDINO_LARGE = DetectorSpec(
    "MM-GDINO-L", "openmmlab-community/mm_grounding_dino_large_all",
    swin=dict(image_size=384, embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
              out_features=["stage1", "stage2", "stage3", "stage4"]),
    num_feature_levels=5,
)

_QWEN2_VL_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, patch_size=14,
                        spatial_merge_size=SPATIAL_MERGE, temporal_patch_size=TEMPORAL_PATCH)
# M-RoPE splits head_dim 128 into temporal / height / width sections.
QWEN_ROPE = dict(rope_type="default", mrope_section=[16, 24, 24], rope_theta=1_000_000.0)

QWEN2_VL_2B = MllmSpec(
    "Qwen2-VL-2B", "Qwen/Qwen2-VL-2B-Instruct", QWEN2_VL,
    text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, vocab_size=151936, rope_parameters=QWEN_ROPE),
    vision=dict(_QWEN2_VL_VISION, hidden_size=1536),
    tie_word_embeddings=True,
)
QWEN2_VL_7B = MllmSpec(
    "Qwen2-VL-7B", "Qwen/Qwen2-VL-7B-Instruct", QWEN2_VL,
    text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, vocab_size=152064, rope_parameters=QWEN_ROPE),
    vision=dict(_QWEN2_VL_VISION, hidden_size=3584),
    tie_word_embeddings=False,
)
QWEN2_5_VL_7B = MllmSpec(
    "Qwen2.5-VL-7B", "Qwen/Qwen2.5-VL-7B-Instruct", QWEN2_5_VL,
    text=dict(QWEN2_VL_7B.text),
    # Windowed attention (112 px windows) in every block but the four full-attention ones.
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                window_size=112, fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", patch_size=14,
                spatial_merge_size=SPATIAL_MERGE, temporal_patch_size=TEMPORAL_PATCH, tokens_per_second=2),
    tie_word_embeddings=False,
)

DETECTORS = (MM_GDINO_TINY, MM_GDINO_LARGE)
MLLMS = (QWEN2_VL_2B, QWEN2_VL_7B, QWEN2_5_VL_7B)


def build_detector(spec: DetectorSpec, device: str | torch.device = "meta"):
    """``MMGroundingDinoForObjectDetection`` with ``spec``'s sizes, in eval mode, on ``device``."""
    from transformers import BertConfig, MMGroundingDinoConfig, MMGroundingDinoForObjectDetection, SwinConfig

    config = MMGroundingDinoConfig(
        backbone_config=SwinConfig(**spec.swin),
        text_config=BertConfig(**spec.text),
        num_feature_levels=spec.num_feature_levels,
        **spec.transformer,
    )
    with torch.device(device):
        model = MMGroundingDinoForObjectDetection(config)
    # A few parameters (e.g. level_embed) are made with the legacy torch.Tensor constructor,
    # which ignores the device context: move them too.
    return model.to(device).eval()


def build_mllm(spec: MllmSpec, device: str | torch.device = "meta", token_ids: dict | None = None):
    """The ``*ForConditionalGeneration`` model of ``spec``'s family, in eval mode, on ``device``.

    ``token_ids`` (``image_token_id``, ``vision_start_token_id``, ...) matter only for a
    model that will read real token ids; FLOP counting on ``meta`` needs none.
    """
    config_class, model_class = _model_classes(spec.family)
    config = config_class(text_config=dict(spec.text), vision_config=dict(spec.vision),
                          tie_word_embeddings=spec.tie_word_embeddings, **(token_ids or {}))
    with torch.device(device):
        model = model_class(config)
    return model.to(device).eval()


def _model_classes(family: ModelFamily):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    classes = {QWEN2_VL.name: (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
               QWEN2_5_VL.name: (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration)}
    return classes[family.name]


def detector_input_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the detector's input for an image of ``image_size`` ``(w, h)``.

    Computed by Grounding DINO's own image processor with the released settings
    (shortest edge 800, longest at most 1333).
    """
    from transformers import GroundingDinoImageProcessor

    pixels = GroundingDinoImageProcessor()(images=Image.new("RGB", image_size), return_tensors="pt")["pixel_values"]
    return tuple(pixels.shape[-2:])


def qwen_vision_grid(spec: MllmSpec, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """``(t, h, w)`` patch grid of an image of ``image_size`` ``(w, h)``, as ``image_grid_thw``.

    The resize is the family's ``smart_resize`` (``ModelFamily.input_size``) within the
    checkpoint's pixel budget, exactly what ``QwenVL`` feeds the model.
    """
    width, height = spec.family.input_size(image_size, spec.min_pixels, spec.max_pixels)
    patch = spec.vision["patch_size"]
    return 1, height // patch, width // patch


def image_token_count(spec: MllmSpec, image_size: tuple[int, int]) -> int:
    """LLM tokens of one image: its patches merged ``SPATIAL_MERGE`` x ``SPATIAL_MERGE``."""
    _, grid_h, grid_w = qwen_vision_grid(spec, image_size)
    return grid_h * grid_w // SPATIAL_MERGE**2
