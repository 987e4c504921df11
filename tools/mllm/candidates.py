"""The questions a local MLLM answers about candidate boxes, read from next-token logits.

``CandidateQuestions`` is part of ``LocalVLM`` (``local.py``): ``select`` asks the CRS
multiple-choice question (one forward pass), ``verify`` the yes/no question of each candidate
(``verify.py``), ``count`` how many objects the expression refers to (``counting.py``, one
forward pass). Questions that differ only at the end (verification's candidates, the option
orders of one CRS question) take two passes: their shared prefix with the image, then a row
each continuing from its KV cache (``shared_prefix.py``). Neither calls ``generate``: the
answer is the next-token distribution over the option letters, or over "yes" and "no", under
the raw logits; except ``select(..., reading="generated")``, which answers as the authors'
scripts do (greedy ``generate``, the text parsed as their evaluators parse it: ``reading.py``)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ..batching import one_call_at_a_time
from ..detections import Detections
from ..images import ImageInput, load_image
from ..batching import chunks
from .checks import check_lengths, checked_text
from .crs import bare_letter_logprobs, crs_prompt, letter_distribution, letter_mass, letter_token_ids
from .decoding import first_step_scores, forget_rope_deltas
from .counting import count_distribution, count_prompt, count_token_ids
from .reading import GENERATED_ANSWER_TOKENS, check_reading
from .selection import Selection
from .shared_prefix import (continuation_inputs, drop_last_tokens, ends_with, left_padded_cat, plan_shared_prefix,
                            positions_from_mask)
from .verify import verify_prompt, yes_no_token_ids, yes_probability


class CandidateQuestions:
    """``select`` and ``verify`` for ``LocalVLM``, which provides the model, the encoding and the batching."""

    # ---------------------------------------------------------------- CRS selection

    def select(
        self, image: ImageInput, expression: str, candidates: Detections, allow_none: bool = False, *,
        reading: str = "letter",
    ) -> Selection:
        """Probabilities over the lettered ``candidates`` (and "None", last, when ``allow_none``);
        ``reading="generated"`` also writes the answer greedily and chooses what it names (``reading.py``)."""
        return self.select_batch([image], [expression], [candidates], allow_none, reading=reading)[0]

    @one_call_at_a_time
    def select_batch(
        self,
        images: Sequence[ImageInput],
        expressions: Sequence[str],
        candidates: Sequence[Detections],
        allow_none: bool = False,
        *,
        reading: str = "letter",
    ) -> list[Selection]:
        """``select`` for several queries: one forward pass per batch, never ``generate``. Queries
        that ask about the same image with the same expression (the option orders of
        ``crs_permutations``) share their prefix as verification's candidates do. ``reading="generated"``:
        one greedy ``generate`` per batch instead (the letter probabilities from its first step)."""
        check_lengths(images=images, expressions=expressions, candidates=candidates)
        check_reading(reading)
        pictures = [load_image(image) for image in images]
        questions = [
            crs_prompt(checked_text(text, "expression"), boxes, picture.size, allow_none, family=self.family,
                       input_size=self.input_size(picture.size), prompts_dir=self.prompts_dir)
            for picture, text, boxes in zip(pictures, expressions, candidates)
        ]
        selections: list[Selection | None] = [None] * len(questions)
        asked = []
        for i, (_, letters) in enumerate(questions):
            # One option is still asked when the answer is read from text: the scripts ask it too.
            if len(letters) > (0 if reading == "generated" else 1):
                asked.append(i)
            else:  # zero options, or "None" alone: nothing to ask the model
                selections[i] = Selection(candidates[i], letters, np.ones(len(letters)), allow_none)
        prompts = [question for question, _ in questions]

        def read(rows: list[int], next_token_logits: torch.Tensor, input_ids: torch.Tensor) -> None:
            processed = first_step_scores(self.model.generation_config, input_ids, next_token_logits)
            for row, i in enumerate(rows):
                letters = questions[i][1]
                ids = self._letter_token_ids(letters)
                selections[i] = Selection(
                    candidates[i], letters, letter_distribution(next_token_logits[row], ids), allow_none,
                    option_mass=letter_mass(next_token_logits[row], ids),
                    letter_logprobs=bare_letter_logprobs(processed[row], ids),
                )

        if reading == "generated":
            for chunk in chunks(self._by_length(pictures, prompts, asked), self.batch_size):
                for i, selection in zip(chunk, self._generated_selections(
                        [self._conversation(pictures[i], prompts[i]) for i in chunk],
                        [(candidates[i], questions[i][1]) for i in chunk], allow_none)):
                    selections[i] = selection
            return selections
        groups = same_question_groups(images, expressions, asked)
        if all(len(group) == 1 for group in groups):  # one row per query: one pass, nothing shared
            for chunk in chunks(self._by_length(pictures, prompts, asked), self.batch_size):
                read(chunk, *self._next_token_logits([self._conversation(pictures[i], prompts[i]) for i in chunk]))
            return selections
        # The same question in several option orders (crs_permutations): its prefix once per image.
        by_first = {group[0]: group for group in groups}
        for chunk in chunks(self._by_length(pictures, prompts, list(by_first)), self.batch_size):
            chunk_groups = [by_first[first] for first in chunk]
            read([i for group in chunk_groups for i in group], *self._shared_prefix_logits(
                [[self._conversation(pictures[i], prompts[i]) for i in group] for group in chunk_groups]))
        return selections

    def _generated_selections(self, conversations, options: list[tuple[Detections, list[str]]],
                              allow_none: bool) -> list[Selection]:
        """The CRS questions answered as the authors' scripts answer them: greedy ``generate`` (the
        checkpoint's logits processors apply), the text decoded without special tokens; the option
        letters' probabilities and log-probabilities from its first step, as ``select`` reads them."""
        inputs, _ = self._encode(conversations)
        output, new_tokens = self._generate_greedily(inputs, GENERATED_ANSWER_TOKENS)
        raw, processed = output.logits[0].float(), output.scores[0].float()
        first_logprobs = torch.log_softmax(processed, dim=-1)
        selections = []
        for row, (boxes, letters) in enumerate(options):
            ids = self._letter_token_ids(letters)
            token_ids = new_tokens[row].tolist()
            text = self.tokenizer.decode(token_ids[: self._answer_length(token_ids)], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False)
            selections.append(Selection(
                boxes, letters, letter_distribution(raw[row], ids), allow_none,
                option_mass=letter_mass(raw[row], ids), letter_logprobs=bare_letter_logprobs(processed[row], ids),
                text=text, first_token_logprob=float(first_logprobs[row, token_ids[0]]),
            ))
        return selections

    # ---------------------------------------------------------------- counting

    def count(self, image: ImageInput, expression: str, candidates: Detections) -> np.ndarray:
        """The probability of each of ``COUNT_ANSWERS`` (0..5, "more") for how many objects the
        expression refers to, asked with the ``candidates`` (``counting.py``): one forward pass."""
        return self.count_batch([image], [expression], [candidates])[0]

    @one_call_at_a_time
    def count_batch(
        self, images: Sequence[ImageInput], expressions: Sequence[str], candidates: Sequence[Detections]
    ) -> list[np.ndarray]:
        """``count`` for several queries: one forward pass per batch, never ``generate``."""
        check_lengths(images=images, expressions=expressions, candidates=candidates)
        pictures = [load_image(image) for image in images]
        prompts = [count_prompt(checked_text(text, "expression"), boxes, picture.size, family=self.family,
                                input_size=self.input_size(picture.size), prompts_dir=self.prompts_dir)
                   for picture, text, boxes in zip(pictures, expressions, candidates)]
        if self._count_ids is None:
            self._count_ids = count_token_ids(self.tokenizer)
        answers: list[np.ndarray | None] = [None] * len(prompts)
        for chunk in chunks(self._by_length(pictures, prompts, range(len(prompts))), self.batch_size):
            logits, _ = self._next_token_logits([self._conversation(pictures[i], prompts[i]) for i in chunk])
            for row, i in enumerate(chunk):
                answers[i] = count_distribution(logits[row], self._count_ids)
        return answers

    # ---------------------------------------------------------------- verification

    def verify(self, image: ImageInput, expression: str, candidates: Detections) -> np.ndarray:
        """``p(yes)`` of each candidate for "is this box what ``expression`` describes?" (``verify.py``)."""
        return self.verify_batch([image], [expression], [candidates])[0]

    @one_call_at_a_time
    def verify_batch(
        self, images: Sequence[ImageInput], expressions: Sequence[str], candidates: Sequence[Detections]
    ) -> list[np.ndarray]:
        """``verify`` for several queries, ``batch_size`` queries at a time: each query's image and
        question prefix in one pass, then one row per candidate continuing from it; one next-token
        read per row, never ``generate``."""
        check_lengths(images=images, expressions=expressions, candidates=candidates)
        pictures = [load_image(image) for image in images]
        questions: list[list[str]] = []  # per query, one question per candidate
        for picture, text, boxes in zip(pictures, expressions, candidates):
            checked_text(text, "expression")
            written = self.family.option_boxes(boxes.boxes, picture.size, self.input_size(picture.size)) if len(
                boxes) else []
            questions.append([verify_prompt(text, box, self.prompts_dir) for box in written])
        if self._yes_no_ids is None:
            self._yes_no_ids = yes_no_token_ids(self.tokenizer)
        probabilities = [np.zeros(len(its)) for its in questions]
        asked = [query for query, its in enumerate(questions) if its]
        first_questions = [its[0] if its else "" for its in questions]
        for chunk in chunks(self._by_length(pictures, first_questions, asked), self.batch_size):
            conversations = [[self._conversation(pictures[query], question) for question in questions[query]]
                             for query in chunk]
            logits, _ = self._shared_prefix_logits(conversations)
            rows = iter(range(logits.shape[0]))
            for query in chunk:
                probabilities[query] = np.array(
                    [yes_probability(logits[next(rows)], self._yes_no_ids) for _ in questions[query]])
        return probabilities

    def _shared_prefix_logits(self, conversations: list[list[list[dict]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits and input ids of every conversation (per query, conversations that
        differ only at the end), query after query: each query's shared prefix runs once and every
        conversation's own tokens continue from its KV cache (``shared_prefix.py``). The ids are
        each row's prefix and own tokens, padding between them. Full rows, ``batch_size`` at a
        time, when the text-only and the processor's tokens disagree."""
        texts = [[self._prompt_text(conversation) for conversation in its] for its in conversations]
        plan = plan_shared_prefix([[self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in its]
                                   for its in texts])
        inputs, _ = self._encode([its[0] for its in conversations])
        first_tails = [plan.tails[plan.owners.index(query)] for query in range(len(conversations))]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if not ends_with(inputs["input_ids"], inputs["attention_mask"], first_tails):
            rows = [conversation for its in conversations for conversation in its]
            passes = [self._next_token_logits(part) for part in chunks(rows, self.batch_size)]
            return torch.cat([logits for logits, _ in passes]), left_padded_cat([ids for _, ids in passes], pad_id)
        prefix = drop_last_tokens(inputs, plan.dropped, pad_id)
        owners = torch.tensor(plan.owners, device=self.device)
        continuation = continuation_inputs(plan.tails, plan.owners, prefix["attention_mask"], pad_id)
        tail_mask = continuation["attention_mask"][:, prefix["attention_mask"].shape[1]:]
        positions = positions_from_mask(tail_mask, self._positions_after(prefix)[owners])
        with self._inference():
            forget_rope_deltas(self.model)  # the prefix pass computes its own M-RoPE offsets
            output = self.model(**prefix, **self._prefix_pass_positions(prefix), use_cache=True, logits_to_keep=1)
            cache = getattr(output, self._cache_argument)
            cache.batch_select_indices(owners)  # a copy of its query's prefix per row
            logits = self.model(**continuation, position_ids=self._continuation_positions(positions),
                                **{self._cache_argument: cache}, use_cache=True, logits_to_keep=1).logits
            forget_rope_deltas(self.model)
        return logits[:, -1].float(), torch.cat([prefix["input_ids"][owners], continuation["input_ids"]], dim=1)

    # ---------------------------------------------------------------- positions of the two passes
    # For 1-D RoPE; the Qwen VL families override them for M-RoPE.

    def _prefix_pass_positions(self, prefix) -> dict:
        """Extra arguments of the prefix pass: positions counted over each row's real tokens."""
        return {"position_ids": positions_from_mask(prefix["attention_mask"])}

    def _positions_after(self, prefix) -> torch.Tensor:
        """The position of the token after each row of the prefix pass."""
        return prefix["attention_mask"].sum(-1)

    def _continuation_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """``position_ids`` for a continuation pass from its 1-D positions."""
        return positions

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


def same_question_groups(images: Sequence[ImageInput], expressions: Sequence[str], indices: Sequence[int]
                         ) -> list[list[int]]:
    """``indices`` grouped by the image (the same object or path) and expression they ask about, in order."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        image = images[i]
        key = (image if isinstance(image, (str, os.PathLike)) else id(image), expressions[i])
        groups.setdefault(key, []).append(i)
    return list(groups.values())
