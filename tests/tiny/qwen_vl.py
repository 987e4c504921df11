"""Tiny, randomly initialised Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints, built offline.

Each ``build_tiny_*`` writes a directory that loads through the ordinary user path::

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)

The models use the real transformers classes with tiny widths (~0.22-0.26M parameters), so the
real code paths run (chat template, smart_resize, patchify, M-RoPE, vision merger, generate)
in milliseconds on CPU. Everything that matters for *coordinate maths* is kept identical to
the released checkpoints: patch_size (14 for Qwen2/2.5, 16 for Qwen3), spatial_merge_size 2
and temporal_patch_size 2, so one LLM image token covers (patch*2)^2 pixels and the resized
image size is ``image_grid_thw[1:] * patch_size``. Only min/max pixels are shrunk.

Run ``python tests/tiny/qwen_vl.py`` for a smoke check (build, load, forward, generate).
"""

from __future__ import annotations

import pathlib

import torch
from transformers import GenerationConfig, Qwen2VLImageProcessor

try:
    from ._qwen_tokenizer import build_qwen_tokenizer
except ImportError:  # run as a script, or imported as a top-level module by pytest
    from _qwen_tokenizer import build_qwen_tokenizer

MERGE = 2  # spatial_merge_size of every released Qwen-VL
TEMPORAL = 2  # temporal_patch_size of every released Qwen-VL (an image is repeated twice)
# Image budget in LLM tokens. Real checkpoints allow 4..16384 tokens; we cap at 128 so that a
# large screenshot is visibly downscaled (exercising the coordinate rescale) yet stays fast.
MIN_IMAGE_TOKENS, MAX_IMAGE_TOKENS = 4, 128

# Shared tiny text-decoder sizes. head_dim = 64 / 4 = 16, so M-RoPE sections must sum to 8.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
HEAD_DIM = TEXT["hidden_size"] // TEXT["num_attention_heads"]


def _tokenizer_and_ids(tok=None):
    tok = tok or build_qwen_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(f"<|{name}|>") for name in
           ("endoftext", "im_end", "image_pad", "video_pad", "vision_start", "vision_end")}
    # Like the real checkpoints, the embedding table is larger than the tokenizer (padded to 64).
    vocab_size = -(-len(tok) // 64) * 64
    return tok, ids, vocab_size


def _token_config(ids) -> dict:
    """Top-level multimodal token ids (same field names for all three config classes)."""
    return dict(image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
                vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"])


def _image_processor(patch: int, **kwargs) -> Qwen2VLImageProcessor:
    """All three families use Qwen2VLImageProcessor; only patch size / normalisation differ.

    ``min_pixels``/``max_pixels`` are the legacy kwargs; transformers 5 stores them as
    ``size={"shortest_edge": min_pixels, "longest_edge": max_pixels}`` (total pixel counts).
    """
    factor = patch * MERGE
    return Qwen2VLImageProcessor(patch_size=patch, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                                 min_pixels=MIN_IMAGE_TOKENS * factor**2, max_pixels=MAX_IMAGE_TOKENS * factor**2,
                                 **kwargs)


def _save(path, model, processor, ids, repetition_penalty: float | None = None) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Greedy by default so tests are deterministic; eos list mirrors the real generation_config.
    penalty = {} if repetition_penalty is None else {"repetition_penalty": repetition_penalty}
    model.generation_config = GenerationConfig(
        bos_token_id=ids["endoftext"], eos_token_id=[ids["im_end"], ids["endoftext"]],
        pad_token_id=ids["endoftext"], do_sample=False, **penalty)
    model.save_pretrained(path)
    processor.save_pretrained(path)  # also writes the tokenizer and chat template
    return path


def build_tiny_qwen2_vl(path, tokenizer=None, repetition_penalty: float | None = None) -> pathlib.Path:
    """Qwen2-VL: patch 14, CLIP normalisation, vision ``embed_dim`` != merger output ``hidden_size``.

    ``tokenizer``: another Qwen tokenizer, e.g. the real Qwen2-VL vocabulary (``tests/real_vocab.py``);
    ``repetition_penalty``: put into the generation config, as Qwen2-VL-7B-Instruct's has one."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    tok, ids, vocab_size = _tokenizer_and_ids(tokenizer)
    config = Qwen2VLConfig(
        text_config=dict(**TEXT, vocab_size=vocab_size, max_position_embeddings=4096,
                         bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"], pad_token_id=ids["endoftext"],
                         # real: [16, 24, 24] for head_dim 128 -> scaled to head_dim 16 (sum 8)
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=1e6)),
        vision_config=dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=4, hidden_size=TEXT["hidden_size"],
                           patch_size=14, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL),
        tie_word_embeddings=False, **_token_config(ids))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    processor = Qwen2VLProcessor(
        image_processor=_image_processor(14),
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                                              min_pixels=MIN_IMAGE_TOKENS * 28**2, max_pixels=MAX_IMAGE_TOKENS * 28**2),
        tokenizer=tok, chat_template=tok.chat_template)
    return _save(path, model, processor, ids, repetition_penalty)


def build_tiny_qwen2_5_vl(path) -> pathlib.Path:
    """Qwen2.5-VL: patch 14, windowed vision attention (window 112 px = 4 merged tokens)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLVideoProcessor)

    tok, ids, vocab_size = _tokenizer_and_ids()
    config = Qwen2_5_VLConfig(
        text_config=dict(**TEXT, vocab_size=vocab_size, max_position_embeddings=4096,
                         bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"], pad_token_id=ids["endoftext"],
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=1e6)),
        # Block 0 uses window attention, block 1 full attention, like real layers 0..6 vs 7.
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                           out_hidden_size=TEXT["hidden_size"], window_size=112, fullatt_block_indexes=[1],
                           tokens_per_second=2, patch_size=14, spatial_merge_size=MERGE,
                           temporal_patch_size=TEMPORAL),
        tie_word_embeddings=False, **_token_config(ids))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2_5_VLProcessor(
        image_processor=_image_processor(14),
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                                              min_pixels=MIN_IMAGE_TOKENS * 28**2, max_pixels=MAX_IMAGE_TOKENS * 28**2),
        tokenizer=tok, chat_template=tok.chat_template)
    return _save(path, model, processor, ids)


def build_tiny_qwen3_vl(path) -> pathlib.Path:
    """Qwen3-VL: patch 16 (factor 32), [-1, 1] normalisation, interleaved M-RoPE, deepstack."""
    try:
        from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                                  Qwen3VLVideoProcessor)
    except ImportError as exc:  # transformers < 4.57
        import transformers

        raise ImportError(f"Qwen3-VL needs a transformers release with Qwen3VLForConditionalGeneration "
                          f"(>= 4.57); installed: {transformers.__version__}") from exc

    tok, ids, vocab_size = _tokenizer_and_ids()
    config = Qwen3VLConfig(
        text_config=dict(**TEXT, head_dim=HEAD_DIM, vocab_size=vocab_size, max_position_embeddings=4096,
                         pad_token_id=ids["endoftext"],
                         # real: [24, 20, 20] interleaved for head_dim 128 -> sum 8 for head_dim 16
                         rope_parameters=dict(rope_type="default", mrope_section=[4, 2, 2], mrope_interleaved=True,
                                              rope_theta=5e6)),
        # num_position_embeddings must be a square (learned 16x16 grid, interpolated per image);
        # deepstack feeds vision block 0's features into decoder layer 0.
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                           out_hidden_size=TEXT["hidden_size"], num_position_embeddings=256,
                           deepstack_visual_indexes=[0], patch_size=16, spatial_merge_size=MERGE,
                           temporal_patch_size=TEMPORAL),
        tie_word_embeddings=False, **_token_config(ids))
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    half = [0.5, 0.5, 0.5]  # Qwen3-VL normalises to [-1, 1], not with CLIP statistics
    processor = Qwen3VLProcessor(
        image_processor=_image_processor(16, image_mean=half, image_std=half),
        # Qwen3-VL's video pixel budget spans all frames, hence the larger cap.
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                                              size={"shortest_edge": MIN_IMAGE_TOKENS * 32**2,
                                                    "longest_edge": 4 * MAX_IMAGE_TOKENS * 32**2}),
        tokenizer=tok, chat_template=tok.chat_template)
    return _save(path, model, processor, ids)


if __name__ == "__main__":
    import tempfile
    import time

    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which option? A or B"}]}]
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in [("qwen2_vl", build_tiny_qwen2_vl), ("qwen2_5_vl", build_tiny_qwen2_5_vl),
                            ("qwen3_vl", build_tiny_qwen3_vl)]:
            t0 = time.perf_counter()
            path = build(pathlib.Path(tmp) / name)
            t1 = time.perf_counter()
            processor = AutoProcessor.from_pretrained(path)
            model = AutoModelForImageTextToText.from_pretrained(path)
            t2 = time.perf_counter()
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert "<|vision_start|><|image_pad|><|vision_end|>" in text, text
            inputs = processor(text=[text], images=[image], return_tensors="pt", padding=True)
            with torch.no_grad():
                logits = model(**inputs).logits
            t3 = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=5)
            t4 = time.perf_counter()
            thw = inputs["image_grid_thw"][0].tolist()
            patch = processor.image_processor.patch_size
            print(f"{name:11s} {type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} params | "
                  f"build {t1 - t0:.2f}s load {t2 - t1:.2f}s forward {t3 - t2:.3f}s generate {t4 - t3:.3f}s | "
                  f"grid_thw {thw} -> resized {thw[1] * patch}x{thw[2] * patch} (HxW) | "
                  f"seq {inputs['input_ids'].shape[1]} logits {tuple(logits.shape)} generated {tuple(out.shape)}")
