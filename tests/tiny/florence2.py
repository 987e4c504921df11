"""A tiny, randomly initialised Florence-2 (transformers' native ``Florence2ForConditionalGeneration``).

A DaViT vision tower (four stages, overall stride 32), the projector and a BART encoder-decoder,
with tiny widths. What the released checkpoints fix is kept: a BART byte-level BPE tokenizer
with the 1000 ``<loc_i>`` tokens and the ``<image>`` token, ``Florence2Processor``'s task prompts
and ``image_seq_length`` = (side / 32)^2 + 1 image tokens. Only the side (64 px, not 768) is
shrunk, so an image is 5 tokens.
"""

from __future__ import annotations

import pathlib

import torch
from transformers import GenerationConfig

try:
    from ._bpe import byte_bpe
except ImportError:  # run as a script
    from _bpe import byte_bpe

SIDE = 64
IMAGE_TOKENS = (SIDE // 32) ** 2 + 1
LOCATION_TOKENS = [f"<loc_{i}>" for i in range(1000)]
# The parse-task table of the released processor_config.json; its phrase-grounding black list is
# shortened here (the real one names ~100 pronouns and generic words).
POST_PROCESSOR_CONFIG = {
    "ocr": {"pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
            "area_threshold": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": ["it", "the image", "this"]},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {}, "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def build_florence2_tokenizer():
    from transformers import BartTokenizer

    vocab, merges = byte_bpe()
    for token in ("<s>", "<pad>", "</s>", "<unk>", "<mask>"):
        vocab.setdefault(token, len(vocab))
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens(["<image>", *LOCATION_TOKENS, "<od>", "</od>", "<ocr>", "</ocr>"], special_tokens=True)
    return tokenizer


def build_tiny_florence2(path) -> pathlib.Path:
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tokenizer = build_florence2_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<s>", "<pad>", "</s>", "<image>")}
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 16, 32], num_heads=[1, 2, 2, 4],
                           num_groups=[1, 2, 2, 4], window_size=2, projection_dim=32, drop_path_rate=0.0,
                           max_position_embeddings=8),
        text_config=dict(model_type="bart", vocab_size=vocab_size, d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=1024, bos_token_id=ids["<s>"],
                         pad_token_id=ids["<pad>"], eos_token_id=ids["</s>"], decoder_start_token_id=ids["</s>"],
                         forced_eos_token_id=ids["</s>"]),
        image_token_id=ids["<image>"],
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"height": SIDE, "width": SIDE}, crop_size={"height": SIDE, "width": SIDE},
                                         do_center_crop=False, image_seq_length=IMAGE_TOKENS)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   post_processor_config=POST_PROCESSOR_CONFIG)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                               pad_token_id=ids["<pad>"], decoder_start_token_id=ids["</s>"],
                                               do_sample=False)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
