"""Tiny, randomly initialised Grounding DINO checkpoints of the real architectures.

The checkpoints are written with ``save_pretrained`` so tests load them through the
same ``from_pretrained`` path a user takes with a Hub id. Random weights give
meaningless boxes: these models exist to test mechanics, never answers.
"""

from __future__ import annotations

from pathlib import Path

# A small lower-case word vocabulary: the Grounding DINO text side lower-cases, and
# whole words as tokens keep hand-computed token spans in tests readable.
_WORDS = (
    "a an the this that of on in to at by with and or is are next left right top bottom "
    "front behind near under above below middle center far side corner "
    "man woman person boy girl child people dog cat bird horse cow sheep zebra giraffe elephant "
    "car truck bus bike bicycle motorcycle train boat plane "
    "snowboard skis ski board skateboard surfboard ball kite umbrella bag chair couch bed table "
    "tree building house window door wall sign pole light "
    "red green blue white black yellow brown gray orange pink purple small big large long short "
    "tall young old happy smiling little two three one holding wearing sitting standing "
    "cup bottle bowl plate pizza cake banana apple sandwich phone laptop tv book clock vase"
).split()
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_PUNCT = tuple(".,;:!?'\"()-")


def _bert_tokenizer():
    from transformers import BertTokenizerFast

    tokens = list(_SPECIAL) + list(_PUNCT) + list("abcdefghijklmnopqrstuvwxyz0123456789") + list(_WORDS)
    tokens += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    # BertTokenizerFast(vocab_file=...) silently yields an empty vocabulary in transformers 5.
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


def _config(model_type: str, vocab_size: int, max_text_len: int):
    from transformers import BertConfig, GroundingDinoConfig, MMGroundingDinoConfig, SwinConfig

    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(64, max_text_len),
    )
    config_class = MMGroundingDinoConfig if model_type == "mm-grounding-dino" else GroundingDinoConfig
    return config_class(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=30,
        encoder_layers=1,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        # decoder_layers=1 breaks the box-head weight tying at construction.
        decoder_layers=2,
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_feature_levels=4,
        max_text_len=max_text_len,
    )


def build_tiny_grounding_dino(path: str | Path, *, mm: bool = True, max_text_len: int = 32, seed: int = 0) -> Path:
    """Write a tiny (MM-)Grounding DINO checkpoint (model, tokenizer, processor) to ``path``.

    ``max_text_len`` is kept small so tests reach the text encoder's limit with short
    expressions; real checkpoints use 256.
    """
    import torch
    from transformers import (
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        MMGroundingDinoForObjectDetection,
    )

    path = Path(path)
    tokenizer = _bert_tokenizer()
    torch.manual_seed(seed)
    model_type = "mm-grounding-dino" if mm else "grounding-dino"
    config = _config(model_type, len(tokenizer), max_text_len)
    model_class = MMGroundingDinoForObjectDetection if mm else GroundingDinoForObjectDetection
    model = model_class(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
