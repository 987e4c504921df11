"""A tiny, randomly initialised InternVL (``-hf`` layout), built offline.

``build_tiny_internvl`` writes a folder that loads through the ordinary user path::

    processor = AutoProcessor.from_pretrained(path)   # InternVLProcessor
    model = AutoModelForImageTextToText.from_pretrained(path)   # InternVLForConditionalGeneration

It is transformers' own InternVL: an InternViT vision tower, the pixel-shuffle projector
(``downsample_ratio`` 0.5) and a Qwen2 language model, with tiny widths. What the released
``-hf`` conversions (``OpenGVLab/InternVL3-*-hf``) fix is kept: the tokenizer is a Qwen2 one
with InternVL's added tokens (``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<quad>``, ``<ref>``,
``<box>`` and their closings, as transformers' ``convert_internvl_weights_to_hf.py`` writes
them) and named image tokens, the chat template is that script's, images are cut into square
tiles plus a thumbnail (``GotOcr2ImageProcessor``, ``crop_to_patches``) and
``image_seq_length = (tile / patch)^2 * 0.25``. Only the tile (64 px, not 448) and the tile
count (at most 4, not 12) are shrunk.
"""

from __future__ import annotations

import pathlib

import torch
from transformers import GenerationConfig

try:
    from ._qwen_tokenizer import build_qwen_tokenizer
except ImportError:  # run as a script
    from _qwen_tokenizer import build_qwen_tokenizer

TILE, PATCH, MAX_TILES = 64, 16, 4
IMAGE_SEQ_LENGTH = (TILE // PATCH) ** 2 // 4  # pixel shuffle halves each side
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
NAMED_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}

# The chat template transformers' convert_internvl_weights_to_hf.py gives every -hf checkpoint.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def build_internvl_tokenizer():
    """The tiny Qwen2 tokenizer with InternVL's added special tokens and named image tokens."""
    tokenizer = build_qwen_tokenizer(added_tokens=tuple(INTERNVL_TOKENS) + ("<video>",), named_tokens=NAMED_TOKENS)
    tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    return tokenizer


def build_tiny_internvl(path) -> pathlib.Path:
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor)

    tokenizer = build_internvl_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|endoftext|>", "<|im_end|>", "<IMG_CONTEXT>")}
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=[TILE, TILE], patch_size=[PATCH, PATCH], use_qk_norm=False),
        text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                         max_position_embeddings=4096, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False),
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=IMAGE_SEQ_LENGTH, downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    size = {"height": TILE, "width": TILE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES,
                                              image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tokenizer, image_seq_length=IMAGE_SEQ_LENGTH, chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":
    import tempfile

    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 128, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_internvl(pathlib.Path(tmp) / "internvl")
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which? A or B"}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[image], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=5)
        print(type(processor).__name__, type(model).__name__, sum(p.numel() for p in model.parameters()),
              tuple(inputs["pixel_values"].shape), tuple(out.shape))
