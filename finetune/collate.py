"""Batches of CRS samples: tokens, images and labels that supervise only the answer.

A row is the chat template's rendering of the user turn with the generation prompt (the
exact text the local MLLM's ``select`` feeds the model) followed by the answer letter and the
end-of-turn token, e.g. ``...<|im_start|>assistant\\nB<|im_end|>``. Rows are padded on the
left, as at inference, so every row ends at the last column: the answer tokens are the
last ``answer_length`` columns and only they carry labels (-100 elsewhere). The logits
that predict them are therefore the last ``answer_length + 1`` columns, which is all the
model has to project onto the vocabulary (``logits_to_keep``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tools.defaults import INTERNVL_TILES
from tools.errors import UserInputError
from tools.images import load_image
from tools.mllm.crs import letter_distribution
from tools.mllm.families import QWEN2_VL, ModelFamily
from tools.mllm.qwen import pixel_budget  # the same default budget as inference

from .samples import CRSSample, sample_conversation

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


# The batch keys that are not model inputs: what evaluation needs to read the chosen option.
OPTION_IDS = "option_token_ids"  # per row, per option: the ids that spell its letter
ANSWER_OPTIONS = "answer_options"  # per row: index of the right option
CRS_KEYS = (OPTION_IDS, ANSWER_OPTIONS)


class CRSCollator:
    """Turns a list of ``CRSSample`` (or ``VerifyQuestion``) into a batch dict (a ``Trainer``'s ``data_collator``).

    The batch holds the model inputs (``input_ids``, ``attention_mask``, ``pixel_values``,
    ``image_grid_thw``), ``labels`` (``IGNORE_INDEX`` except the answer tokens),
    ``logits_to_keep`` (the answer length + 1: only those columns are projected onto the
    vocabulary) and the ``CRS_KEYS``, which ``CRSTrainer`` takes out before the forward pass.

    Images are loaded as at inference: for Qwen VL resized by ``qwen_vl_utils`` within
    ``min_pixels``/``max_pixels`` (default: the processor's budget, as ``QwenVL`` uses), for
    InternVL cut into at most ``max_patches`` tiles (default ``INTERNVL_TILES``, as ``InternVL``
    uses); the options are written in ``family``'s box language, as ``select`` writes them.
    """

    def __init__(self, processor, *, min_pixels: int | None = None, max_pixels: int | None = None,
                 max_patches: int | None = None, prompts_dir: str | None = None,
                 family: ModelFamily = QWEN2_VL) -> None:
        self.family = family
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        image_processor = processor.image_processor
        self.patch_size = self.min_pixels = self.max_pixels = None
        if family.uses_smart_resize:
            self.patch_size = int(image_processor.patch_size)
            default_min, default_max = pixel_budget(image_processor)
            self.min_pixels = int(min_pixels or default_min)
            self.max_pixels = int(max_pixels or default_max)
            if not 0 < self.min_pixels <= self.max_pixels:
                raise UserInputError(
                    f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        self.max_patches = int(max_patches or INTERNVL_TILES)
        self.prompts_dir = prompts_dir
        self._option_ids: dict[tuple[str, ...], list[list[int]]] = {}

    def __call__(self, samples: Sequence[CRSSample]) -> dict:
        conversations, texts, answer_ids = [], [], []
        for sample in samples:
            picture = load_image(sample.image)
            if picture.size != sample.image_size:
                raise UserInputError(f"sample {sample.id!r}: image {sample.image} is {picture.size[0]}x"
                                     f"{picture.size[1]}, but its image_size says {sample.image_size}")
            conversation = sample_conversation(sample, picture, min_pixels=self.min_pixels,
                                               max_pixels=self.max_pixels, prompts_dir=self.prompts_dir,
                                               family=self.family, patch_size=self.patch_size)
            prompt, answer = self._split_answer(conversation, sample)
            conversations.append(conversation)
            texts.append(prompt + answer)
            answer_ids.append(self._token_ids(answer))
        answer_length = len(answer_ids[0])
        if any(len(ids) != answer_length for ids in answer_ids):
            raise ValueError("answers of one batch tokenize to different lengths: " + str(answer_ids))
        encoded = self._encode(conversations, texts)
        input_ids = encoded["input_ids"]
        expected = torch.tensor(answer_ids, dtype=input_ids.dtype)
        if not torch.equal(input_ids[:, -answer_length:], expected):
            raise ValueError("the answer tokens merged with the prompt's last token; cannot mask labels")
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, -answer_length:] = expected
        return {
            **encoded,
            "labels": labels,
            "logits_to_keep": answer_length + 1,
            OPTION_IDS: [self._option_token_ids(sample) for sample in samples],
            ANSWER_OPTIONS: [sample.answer_index for sample in samples],
        }

    def _encode(self, conversations: list[list[dict]], texts: list[str]):
        """Tokens and pixels, the images prepared exactly as the inference backend prepares them."""
        if self.family.uses_smart_resize:
            from qwen_vl_utils import process_vision_info

            images, _ = process_vision_info(conversations, image_patch_size=self.patch_size)
            # Already resized within our budget; resizing again would apply the processor's own.
            return self.processor(text=texts, images=images, padding=True, return_tensors="pt", do_resize=False)
        images = [conversation[0]["content"][0]["image"] for conversation in conversations]
        return self.processor(text=texts, images=images, padding=True, return_tensors="pt",
                              crop_to_patches=self.max_patches > 1, max_patches=self.max_patches)

    def _split_answer(self, conversation: list[dict], sample: CRSSample) -> tuple[str, str]:
        """The prompt as at inference, and the supervised continuation (letter + end of turn).

        The chat template renders the assistant turn; what follows the end-of-turn token
        (Qwen writes a newline) is left out, since generation stops at that token.
        """
        prompt = self.processor.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
        full = self.processor.apply_chat_template(conversation, tokenize=False)
        answer = full[len(prompt):].rstrip()
        if not full.startswith(prompt) or not answer.startswith(sample.answer) or answer == sample.answer:
            raise UserInputError(
                f"the chat template does not render the answer right after the generation prompt "
                f"(got {full[len(prompt) - 20:]!r}); CRS training needs the letter as the first answer token"
            )
        return prompt, answer

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _option_token_ids(self, sample) -> list[list[int]]:
        key = tuple(sample.options)
        if key not in self._option_ids:
            self._option_ids[key] = sample.option_token_ids(self.tokenizer)
        return self._option_ids[key]


def answer_loss(outputs, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the answer tokens (the ``Trainer``'s ``compute_loss_func``).

    ``outputs.logits`` holds the last ``answer_length + 1`` columns (``logits_to_keep``): column
    ``j`` predicts answer token ``j``. The sum is divided by ``num_items_in_batch``, the answer
    tokens of the whole optimizer step (all micro-batches and processes), so every token weighs
    the same whatever the micro-batch sizes; without it, by this batch's own count.
    """
    logits = outputs.logits[:, :-1]
    targets = labels[:, -logits.shape[1]:]
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    count = targets.ne(IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
    return total / count


def chosen_options(logits: torch.Tensor, option_ids: Sequence[Sequence[Sequence[int]]]) -> list[int]:
    """Per row, the option with the most probable letter at the answer position.

    The same reading as ``QwenVL.select``: option probabilities from the next-token logits
    of the letters (all their spellings), argmax. ``logits`` are the kept columns.
    """
    letter_logits = logits[:, 0]
    return [int(np.argmax(letter_distribution(letter_logits[row], ids))) for row, ids in enumerate(option_ids)]
