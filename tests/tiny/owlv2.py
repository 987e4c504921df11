"""A tiny, randomly initialised OWLv2 (``Owlv2ForObjectDetection``), built offline.

transformers' own OWLv2 (CLIP text and vision towers, box and class heads) with tiny widths;
what the released checkpoints fix is kept: a CLIP tokenizer whose queries are padded to
``max_position_embeddings`` = 16 tokens, images padded to a square then resized, one box per
image patch. Only the image side (64 px, not 960) and the patch (16 px) are shrunk: 16 boxes.
"""

from __future__ import annotations

import pathlib

import torch

try:
    from ._bpe import byte_bpe
except ImportError:  # run as a script
    from _bpe import byte_bpe

IMAGE, PATCH, QUERY_TOKENS = 64, 16, 16


def build_tiny_owlv2(path) -> pathlib.Path:
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    vocab, merges = byte_bpe(end_of_word_suffix="</w>")
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=QUERY_TOKENS)
    config = Owlv2Config(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=len(vocab), max_position_embeddings=QUERY_TOKENS,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE, patch_size=PATCH),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config).eval()
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": IMAGE, "width": IMAGE}),
                               tokenizer=tokenizer)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
