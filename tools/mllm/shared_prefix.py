"""Many questions that share a long prefix (the image and the first lines), read in two passes.

Verification asks one yes/no question per candidate, and the questions of one query differ
only in their last line (the box); the option orders of one CRS question (``crs_permutations``)
differ from the first option on. Encoding each row in full would run the vision tower and
the image's tokens once per candidate; here the shared prefix of each query runs once (one
pass over the queries, its KV cache kept) and the candidates' own tokens run in a second pass
that continues from that cache (one row per candidate). Each row's next-token logits equal
those of its full encoding, up to float rounding (the tests check it against ``LocalVLM``'s
full rows for every local family).

Positions. RoPE scores depend only on distances, so each row only needs positions that are
consecutive over its real tokens and continue its prefix's. 1-D RoPE models get them explicitly
in both passes. The Qwen VL families place the image with M-RoPE in the prefix pass themselves;
their continuation starts after the image's grid extent (``QwenVL._positions_after``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch


@dataclass(frozen=True)
class SharedPrefixPlan:
    """How the questions of one batch of queries split into a shared prefix and their own tails."""

    tails: list[list[int]]  # each question's own tokens (the ends of its full encoding)
    owners: list[int]  # the query (row of the prefix pass) each question belongs to
    dropped: list[int]  # per query, how many tokens its first question's full encoding loses


def plan_shared_prefix(token_lists: Sequence[Sequence[Sequence[int]]]) -> SharedPrefixPlan:
    """Split each query's questions (text-only token ids, one list per question) where they part.

    Every question keeps at least its last token, so a query with one question still has a tail.
    """
    tails, owners, dropped = [], [], []
    for query, questions in enumerate(token_lists):
        shared = common_prefix_length(questions)
        tails += [list(question[shared:]) for question in questions]
        owners += [query] * len(questions)
        dropped.append(len(questions[0]) - shared)
    return SharedPrefixPlan(tails, owners, dropped)


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``sequences`` share, leaving the shortest at least one of its own."""
    limit = min(len(sequence) for sequence in sequences) - 1
    length = 0
    while length < limit and all(sequence[length] == sequences[0][length] for sequence in sequences):
        length += 1
    return length


def ends_with(input_ids: torch.Tensor, attention_mask: torch.Tensor, tails: Sequence[Sequence[int]]) -> bool:
    """Whether each left-padded row ends with its tail: the text-only and the processor's tokens agree."""
    for row, tail in zip(range(input_ids.shape[0]), tails):
        real = input_ids[row][attention_mask[row].bool()].tolist()
        if len(real) <= len(tail) or real[len(real) - len(tail):] != list(tail):
            return False
    return True


def drop_last_tokens(inputs: Mapping[str, torch.Tensor], counts: Sequence[int], pad_id: int) -> dict:
    """``inputs`` (left-padded) with the last ``counts[row]`` tokens of each row removed, left-padded
    again to the longest row left.

    Every per-token tensor (the shape of ``input_ids``) is cut alike; the rest (pixels, grids) is kept.
    """
    input_ids = inputs["input_ids"]
    width = input_ids.shape[1]
    kept = int(max(int(real) - count for real, count in zip(inputs["attention_mask"].sum(-1), counts)))
    cut = {}
    for name, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.shape != input_ids.shape:
            cut[name] = value
            continue
        shifted = torch.full_like(value, pad_id if name == "input_ids" else 0)
        for row, count in enumerate(counts):
            shifted[row, count:] = value[row, : width - count]
        cut[name] = shifted[:, width - kept:]
    return cut


def positions_from_mask(attention_mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Consecutive positions over each row's real tokens, from ``start`` (per row or one number); 0 on padding."""
    mask = attention_mask.long()
    start = torch.as_tensor(start, device=mask.device).reshape(-1, 1)
    return ((mask.cumsum(-1) - 1).clamp(min=0) + start) * mask


def continuation_inputs(
    tails: Sequence[Sequence[int]], owners: Sequence[int], prefix_mask: torch.Tensor, pad_id: int
) -> dict:
    """The second pass's ``input_ids`` (left-padded tails) and the ``attention_mask`` over prefix and tail."""
    width = max(len(tail) for tail in tails)
    device = prefix_mask.device
    input_ids = torch.full((len(tails), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(tails), width), dtype=prefix_mask.dtype, device=device)
    for row, tail in enumerate(tails):
        input_ids[row, width - len(tail):] = torch.tensor(tail, dtype=torch.long, device=device)
        mask[row, width - len(tail):] = 1
    owners_index = torch.tensor(owners, dtype=torch.long, device=device)
    return {"input_ids": input_ids, "attention_mask": torch.cat([prefix_mask[owners_index], mask], dim=1)}


def left_padded_cat(tensors: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    """Left-padded ``(rows, width)`` tensors stacked into one, padded on the left to the widest."""
    width = max(tensor.shape[1] for tensor in tensors)
    return torch.cat([torch.nn.functional.pad(tensor, (width - tensor.shape[1], 0), value=pad_id)
                      for tensor in tensors])
