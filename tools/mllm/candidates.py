"""The questions a local MLLM answers about candidate boxes, each read from one forward pass.

``CandidateQuestions`` is part of ``LocalVLM`` (``local.py``): ``select`` asks the CRS
multiple-choice question, ``verify`` the yes/no question of each candidate (``verify.py``).
Neither calls ``generate``: the answer is the next-token distribution over the option letters,
or over "yes" and "no", under the raw logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..batching import one_call_at_a_time
from ..detections import Detections
from ..images import ImageInput, load_image
from .batches import check_lengths, checked_text, chunks
from .crs import bare_letter_logprobs, crs_prompt, letter_distribution, letter_mass, letter_token_ids
from .decoding import first_step_scores
from .selection import Selection
from .verify import verify_prompt, yes_no_token_ids, yes_probability


class CandidateQuestions:
    """``select`` and ``verify`` for ``LocalVLM``, which provides the model, the encoding and the batching."""

    # ---------------------------------------------------------------- CRS selection

    def select(
        self, image: ImageInput, expression: str, candidates: Detections, allow_none: bool = False
    ) -> Selection:
        """Probabilities over the lettered ``candidates`` (and "None", last, when ``allow_none``)."""
        return self.select_batch([image], [expression], [candidates], allow_none)[0]

    @one_call_at_a_time
    def select_batch(
        self,
        images: Sequence[ImageInput],
        expressions: Sequence[str],
        candidates: Sequence[Detections],
        allow_none: bool = False,
    ) -> list[Selection]:
        """``select`` for several queries: one forward pass per batch, never ``generate``."""
        check_lengths(images=images, expressions=expressions, candidates=candidates)
        pictures = [load_image(image) for image in images]
        questions = [
            crs_prompt(checked_text(text, "expression"), boxes, picture.size, allow_none, family=self.family,
                       input_size=self.input_size(picture.size), prompts_dir=self.prompts_dir)
            for picture, text, boxes in zip(pictures, expressions, candidates)
        ]
        selections: list[Selection | None] = [None] * len(questions)
        asked = []
        for i, (_, letters) in enumerate(questions):
            if len(letters) > 1:
                asked.append(i)
            else:  # zero options, or "None" alone: nothing to ask the model
                selections[i] = Selection(candidates[i], letters, np.ones(len(letters)), allow_none)
        prompts = [question for question, _ in questions]
        for chunk in chunks(self._by_length(pictures, prompts, asked), self.batch_size):
            next_token_logits, input_ids = self._next_token_logits(
                [self._conversation(pictures[i], questions[i][0]) for i in chunk])
            processed = first_step_scores(self.model.generation_config, input_ids, next_token_logits)
            for row, i in enumerate(chunk):
                letters = questions[i][1]
                ids = self._letter_token_ids(letters)
                selections[i] = Selection(
                    candidates[i], letters, letter_distribution(next_token_logits[row], ids), allow_none,
                    option_mass=letter_mass(next_token_logits[row], ids),
                    letter_logprobs=bare_letter_logprobs(processed[row], ids),
                )
        return selections

    # ---------------------------------------------------------------- verification

    def verify(self, image: ImageInput, expression: str, candidates: Detections) -> np.ndarray:
        """``p(yes)`` of each candidate for "is this box what ``expression`` describes?" (``verify.py``)."""
        return self.verify_batch([image], [expression], [candidates])[0]

    @one_call_at_a_time
    def verify_batch(
        self, images: Sequence[ImageInput], expressions: Sequence[str], candidates: Sequence[Detections]
    ) -> list[np.ndarray]:
        """``verify`` for several queries: one row per candidate, ``batch_size`` rows per forward pass,
        one next-token read per row, never ``generate``."""
        check_lengths(images=images, expressions=expressions, candidates=candidates)
        pictures = [load_image(image) for image in images]
        rows: list[tuple[int, str]] = []  # (query, question) per candidate
        for query, (picture, text, boxes) in enumerate(zip(pictures, expressions, candidates)):
            checked_text(text, "expression")
            if len(boxes):
                written = self.family.option_boxes(boxes.boxes, picture.size, self.input_size(picture.size))
                rows += [(query, verify_prompt(text, box, self.prompts_dir)) for box in written]
        if self._yes_no_ids is None:
            self._yes_no_ids = yes_no_token_ids(self.tokenizer)
        row_pictures = [pictures[query] for query, _ in rows]
        probabilities = np.zeros(len(rows))
        for chunk in chunks(self._by_length(row_pictures, [q for _, q in rows], range(len(rows))), self.batch_size):
            next_token_logits, _ = self._next_token_logits(
                [self._conversation(row_pictures[i], rows[i][1]) for i in chunk])
            for row, i in enumerate(chunk):
                probabilities[i] = yes_probability(next_token_logits[row], self._yes_no_ids)
        queries = np.array([query for query, _ in rows], dtype=np.int64)
        return [probabilities[queries == query] for query in range(len(pictures))]

    def _next_token_logits(self, conversations: list[list[dict]]):
        """The next-token logits of each conversation (one forward pass) and the input ids."""
        inputs, _ = self._encode(conversations)
        with self._inference():  # left padding: column -1 is every row's next token
            # One step: a KV cache would only be built to be thrown away.
            logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        return logits, inputs["input_ids"]

    def _letter_token_ids(self, letters: Sequence[str]) -> list[list[int]]:
        key = tuple(letters)
        if key not in self._letter_ids:
            self._letter_ids[key] = letter_token_ids(self.tokenizer, key)
        return self._letter_ids[key]
