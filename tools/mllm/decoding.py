"""Greedy decoding with transformers, shared by the Qwen VL backend: the scores greedy
``generate`` ranks by, each chosen token's score, stop tokens, token texts, and the M-RoPE
state a continued KV cache must not inherit."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# A UTF-8 character spans at most 4 bytes, hence at most 4 byte-level tokens.
_MAX_TOKENS_PER_CHARACTER = 4


def first_step_scores(generation_config, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The first generated step's scores as greedy ``generate`` would see them: ``logits`` after the
    processors a greedy generation config switches on (repetition penalty, n-gram ban, suppressed
    tokens, minimum new tokens). Sampling warpers (temperature, top-p, top-k) play no part in
    greedy decoding, as in the reference's ``generate(do_sample=False)``."""
    from transformers import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
    )

    processors = LogitsProcessorList()
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=float(penalty)))
    ngram = getattr(generation_config, "no_repeat_ngram_size", None)
    if ngram:
        processors.append(NoRepeatNGramLogitsProcessor(int(ngram)))
    minimum, eos = getattr(generation_config, "min_new_tokens", None), generation_config.eos_token_id
    if minimum and eos is not None:
        processors.append(
            MinNewTokensLengthLogitsProcessor(input_ids.shape[1], int(minimum), eos, device=logits.device)
        )
    suppressed = getattr(generation_config, "suppress_tokens", None)
    if suppressed:
        processors.append(SuppressTokensLogitsProcessor(list(suppressed), device=logits.device))
    return processors(input_ids, logits.clone()) if processors else logits


def chosen_scores(step_scores: Sequence[torch.Tensor], new_tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per row and step, the chosen token's score and log-softmax, as ``(batch, steps)`` arrays."""
    scores, logprobs = [], []
    for step, step_score in enumerate(step_scores):
        step_score = step_score.float()
        chosen = new_tokens[:, step, None]
        scores.append(step_score.gather(1, chosen)[:, 0])
        logprobs.append(torch.log_softmax(step_score, dim=-1).gather(1, chosen)[:, 0])
    return torch.stack(scores, dim=1).cpu().numpy(), torch.stack(logprobs, dim=1).cpu().numpy()


def stop_token_ids(generation_config, tokenizer) -> set[int]:
    # Generation stops at any eos id; finished rows of a batch are then filled with pad.
    ids = generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    ids += [tokenizer.eos_token_id, generation_config.pad_token_id, tokenizer.pad_token_id]
    return {int(token) for token in ids if token is not None}


def forget_rope_deltas(model) -> None:
    """Qwen VL models keep the M-RoPE offsets of their last call, computed afresh only when a
    call starts at position 0. A call continuing a prefix cache starts later, so the offsets
    of the last (image) call would shift its positions: clear them to be recomputed."""
    for module in model.modules():
        if getattr(module, "rope_deltas", None) is not None:
            module.rope_deltas = None


def token_texts(tokenizer, token_ids: list[int]) -> list[str]:
    """Text of each token, so that their concatenation is the decoded answer.

    A character split over several byte-level tokens decodes as U+FFFD piece by piece;
    such a run is decoded together and its text credited to its first token.
    """
    texts: list[str] = []
    start = 0
    while start < len(token_ids):
        end = start + 1
        piece = tokenizer.decode(token_ids[start:end])
        while piece.endswith("\ufffd") and end < len(token_ids) and end - start < _MAX_TOKENS_PER_CHARACTER:
            end += 1
            piece = tokenizer.decode(token_ids[start:end])
        if piece.endswith("\ufffd"):  # not a split character after all: keep the first token alone
            end = start + 1
            piece = tokenizer.decode(token_ids[start:end])
        texts.append(piece)
        texts.extend([""] * (end - start - 1))
        start = end
    return texts
