"""An MLLM behind an OpenAI-compatible chat-completions server (vLLM, SGLang, LM Studio, OpenAI).

``OpenAICompatibleMLLM`` implements the ``MLLM`` protocol over HTTP with the official
``openai`` client. Images travel as base64 data URLs in ``image_url`` content parts.

Grounding sends the box family's prompt (``tools.mllm.families``) and parses the answer
with the same family. CRS selection asks for one token with ``logprobs`` and
``top_logprobs=20`` and reads the option probabilities from the first token's top list
(``option_probabilities``); servers that return no logprobs are answered from the reply
text instead (one-hot).

The retrying transport is ``tools.openai_client.ChatCompletionsClient``, shared with the
served target extractors.
"""

from __future__ import annotations

import base64
import io
import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..batching import PartialBatchError
from ..defaults import BATCH_SIZE
from ..detections import Detections
from ..drawing import draw_detections
from ..errors import ModelOutputError, UserInputError
from ..images import load_image
from ..openai_client import ChatCompletionsClient, RetryPolicy
from ..text import bare_token
from .crs import NONE_OPTION, crs_marks_prompt, crs_prompt, option_letters
from .counting import COUNT_ANSWERS, count_from_text, count_prompt
from .families import box_token_confidence, get_family
from .reading import GENERATED_ANSWER_TOKENS, check_reading, script_letter
from .verify import parse_yes_no, verify_prompt, yes_probability_from_top
from .selection import Selection

TOP_LOGPROBS = 20
# Colours of Set-of-Mark boxes, cycled in option order; saturated so letters stay legible.
MARK_COLOURS = ((255, 0, 255), (255, 200, 0), (0, 255, 255), (255, 80, 0), (120, 0, 255), (0, 160, 0))


class OpenAICompatibleMLLM:
    """The ``MLLM`` protocol served over the OpenAI chat-completions API.

    ``family`` names the box convention the served model writes (see
    ``tools.mllm.families``; default "qwen2-vl"); requests use temperature 0. With
    ``marks=True`` CRS draws the lettered candidate boxes on the image (Set-of-Mark)
    and asks with letters only, for models that cannot read coordinates.
    ``image_format`` ("png" or "jpeg") is how images are encoded. ``min_pixels`` /
    ``max_pixels`` must match the server's image resizing when the family answers in
    pixels of the resized input (Qwen2.5-VL; ``None`` = Qwen's defaults). ``retry`` says how
    patiently the server is asked (``RetryPolicy``). ``ground_batch`` and ``select_batch`` send
    up to ``concurrency`` requests at once (a server such as vLLM batches them itself), each
    with its own retries and time bounds; answers come in input order, and when some fail a
    ``PartialBatchError`` carries the others.
    """

    thread_safe = True  # one HTTP client, no state between requests

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        family: str = "qwen2-vl",
        marks: bool = False,
        image_format: str = "png",
        max_new_tokens: int = 128,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = BATCH_SIZE,
        prompts_dir: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise UserInputError(f"concurrency must be at least 1, got {concurrency}")
        if image_format.lower() not in ("png", "jpeg", "jpg"):
            raise UserInputError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
        self.model = model
        self.family = get_family(family)
        self.marks = marks
        self.image_format = image_format.lower()
        self.max_new_tokens = max_new_tokens
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.prompts_dir = prompts_dir
        self.concurrency = concurrency
        self.client = ChatCompletionsClient(base_url, api_key, retry=retry)

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleMLLM(model={self.model!r}, base_url={self.client.base_url!r}, "
            f"family={self.family.title!r}, marks={self.marks})"
        )

    def ground(self, image: Image.Image, expression: str, focus: str | None = None) -> Detections:
        """Boxes the served model writes for ``expression`` (``focus``: target-focus prompt).

        Scores are the mean probability of each box's tokens when the server returns
        logprobs (the answer is then parsed from the joined tokens, so each box's
        characters map onto its tokens); without logprobs every score is 1.0. Raises
        ``ModelOutputError`` when the answer holds no usable box.
        """
        image = load_image(image)
        prompt = self.family.grounding_prompt(expression, focus, self.prompts_dir)
        response = self.client.create(**self._request(self._data_url(image), prompt), max_tokens=self.max_new_tokens,
                                      logprobs=True)
        choice = response.choices[0]
        tokens = token_steps(choice)
        text = "".join(token.token for token in tokens) if tokens else choice.message.content
        parsed = self.family.parse_answer(text, image.size, self._input_size(image))
        confidence = None
        if tokens:
            confidence = box_token_confidence(
                [token.token for token in tokens], [token.logprob for token in tokens], None, parsed.spans
            )
        return parsed.to_detections(confidence, default_label=expression)

    def ground_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                     focuses: Sequence[str | None] | None = None) -> list[Detections]:
        """``ground`` for several queries, ``concurrency`` requests in flight."""
        focuses = [None] * len(expressions) if focuses is None else list(focuses)
        return self._concurrently(self.ground, list(zip(images, expressions, focuses)))

    def select_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                     candidates: Sequence[Detections], allow_none: bool = False, *,
                     reading: str = "letter") -> list[Selection]:
        """``select`` for several queries, ``concurrency`` requests in flight."""
        return self._concurrently(
            lambda image, expression, boxes: self.select(image, expression, boxes, allow_none, reading=reading),
            list(zip(images, expressions, candidates)))

    def _concurrently(self, call, argument_lists: list[tuple]) -> list:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(argument_lists)))) as pool:
            futures = [pool.submit(call, *arguments) for arguments in argument_lists]
        answers = []
        for future in futures:
            error = future.exception()
            answers.append(error if error is not None else future.result())
        if any(isinstance(answer, BaseException) for answer in answers):
            raise PartialBatchError(answers)
        return answers

    def select(
        self, image: Image.Image, expression: str, candidates: Detections, allow_none: bool = False, *,
        reading: str = "letter",
    ) -> Selection:
        """CRS: probabilities over the lettered candidates (and "None" when allowed).

        With fewer than two options there is nothing to ask and no request is sent.
        Without usable logprobs (none returned, or no option letter among the top
        tokens) the reply text decides, one-hot; ``ModelOutputError`` when it names no option.
        With logprobs the selection also records ``option_mass`` (the option letters' share
        of the listed probability) and ``letter_logprobs`` (each bare letter's log-probability
        as the server reports it; ``nan`` when not among the top tokens).

        ``reading="generated"`` (the reference profile) asks for up to ``GENERATED_ANSWER_TOKENS`` (128)
        tokens at temperature 0 and chooses what the reply names as the authors' evaluators read it
        (``reading.py``); a question with one option is asked too. ``first_token_logprob`` is then
        the first token's log-probability as the server reports it (vLLM: of the raw logits unless
        its ``logprobs-mode`` says otherwise), where a local model gives it after the logits processors.
        """
        check_reading(reading)
        image = load_image(image)
        letters = option_letters(len(candidates), allow_none)
        if len(letters) < (1 if reading == "generated" else 2):
            return Selection(candidates, letters, np.ones(len(letters)), allow_none)
        if self.marks:
            prompt, letters = crs_marks_prompt(expression, len(candidates), allow_none, prompts_dir=self.prompts_dir)
            image = draw_marks(image, candidates, letters)
        else:
            prompt, letters = crs_prompt(expression, candidates, image.size, allow_none, family=self.family,
                                         input_size=self._input_size(image), prompts_dir=self.prompts_dir)
        generated = reading == "generated"
        response = self.client.create(
            **self._request(self._data_url(image), prompt), max_tokens=GENERATED_ANSWER_TOKENS if generated else 1,
            logprobs=True, top_logprobs=TOP_LOGPROBS
        )
        choice = response.choices[0]
        steps = token_steps(choice)
        probabilities, statistics = None, {}
        if steps:
            top = first_top_logprobs(choice)
            probabilities = option_probabilities(top, letters)
            statistics = letter_statistics(top, letters)
        text = choice.message.content or ""
        if generated:
            statistics.update(text=text, first_token_logprob=steps[0].logprob if steps else None)
            if probabilities is None:  # no log-probabilities: what the text names, else undecided
                letter = script_letter(text, allow_none)
                probabilities = (np.eye(len(letters))[letters.index(letter)] if letter in letters
                                 else np.full(len(letters), 1 / len(letters)))
        if probabilities is None:
            chosen = parse_option_letter(text, letters, allow_none)
            probabilities = np.eye(len(letters))[letters.index(chosen)]
        return Selection(candidates, letters, probabilities, allow_none, **statistics)

    def count(self, image: Image.Image, expression: str, candidates: Detections) -> np.ndarray:
        """The probability of each of ``COUNT_ANSWERS`` (``counting.py``): one one-token request with
        ``top_logprobs``; without usable logprobs the count the reply names, one-hot."""
        image = load_image(image)
        prompt = count_prompt(expression, candidates, image.size, family=self.family,
                              input_size=self._input_size(image), prompts_dir=self.prompts_dir)
        response = self.client.create(**self._request(self._data_url(image), prompt), max_tokens=1, logprobs=True,
                                      top_logprobs=TOP_LOGPROBS)
        choice = response.choices[0]
        top = first_top_logprobs(choice)
        probabilities = count_probabilities(top) if top else None
        return count_from_text(choice.message.content or "") if probabilities is None else probabilities

    def count_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                    candidates: Sequence[Detections]) -> list[np.ndarray]:
        """``count`` for several queries, ``concurrency`` requests in flight."""
        return self._concurrently(self.count, list(zip(images, expressions, candidates)))

    def verify(self, image: Image.Image, expression: str, candidates: Detections) -> np.ndarray:
        """``p(yes)`` of each candidate (``verify.py``): one request per candidate, one token with
        ``top_logprobs``; without usable logprobs the reply's yes (1) or no (0) decides."""
        try:
            return self.verify_batch([image], [expression], [candidates])[0]
        except PartialBatchError as partial:
            raise partial.results[0] from None

    def verify_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                     candidates: Sequence[Detections]) -> list[np.ndarray]:
        """``verify`` for several queries, ``concurrency`` requests (one per candidate) in flight;
        a query with a failed request fails alone (``PartialBatchError``)."""
        rows = []  # (query, image data URL, question): each image encoded once for all its candidates
        for query, (image, expression, boxes) in enumerate(zip(images, expressions, candidates)):
            image = load_image(image)
            if not len(boxes):
                continue
            url = self._data_url(image)
            written = self.family.option_boxes(boxes.boxes, image.size, self._input_size(image))
            rows += [(query, url, verify_prompt(expression, box, self.prompts_dir)) for box in written]
        try:
            answers = self._concurrently(self._yes_probability, [(url, question) for _, url, question in rows])
        except PartialBatchError as partial:
            answers = partial.results
        results: list = [[] for _ in images]
        for (query, _, _), answer in zip(rows, answers):
            if isinstance(answer, BaseException) or isinstance(results[query], BaseException):
                results[query] = results[query] if isinstance(results[query], BaseException) else answer
            else:
                results[query].append(answer)
        results = [result if isinstance(result, BaseException) else np.array(result, dtype=np.float64)
                   for result in results]
        if any(isinstance(result, BaseException) for result in results):
            raise PartialBatchError(results)
        return results

    def _yes_probability(self, image_url: str, question: str) -> float:
        response = self.client.create(**self._request(image_url, question), max_tokens=1, logprobs=True,
                                      top_logprobs=TOP_LOGPROBS)
        choice = response.choices[0]
        top = first_top_logprobs(choice)
        probability = yes_probability_from_top(top) if top else None
        return parse_yes_no(choice.message.content or "") if probability is None else probability

    def _input_size(self, image: Image.Image) -> tuple[int, int] | None:
        """The resized input's size when the family writes boxes in its pixels, else ``None``."""
        if not self.family.needs_input_size:
            return None
        return self.family.input_size(image.size, self.min_pixels, self.max_pixels)

    def _data_url(self, image: Image.Image) -> str:
        return image_data_url(image, self.image_format)

    def _request(self, image_url: str, prompt: str) -> dict[str, Any]:
        content = [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": prompt},
        ]
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0}


def token_steps(choice: Any) -> list:
    """The per-token log-probability entries of a chat-completion ``choice`` (none when the server sent none)."""
    return choice.logprobs.content if choice.logprobs and choice.logprobs.content else []


def first_top_logprobs(choice: Any) -> list[tuple[str, float]] | None:
    """``(token, logprob)`` of the first answer token's top alternatives; ``None`` without logprobs."""
    steps = token_steps(choice)
    return [(top.token, top.logprob) for top in steps[0].top_logprobs] if steps else None


def image_data_url(image: Image.Image, image_format: str = "png") -> str:
    """``data:image/...;base64,...`` for ``image`` encoded as PNG (lossless) or JPEG (smaller)."""
    jpeg = image_format.lower() in ("jpeg", "jpg")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))
    mime = "image/jpeg" if jpeg else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def draw_marks(image: Image.Image, candidates: Detections, letters: Sequence[str]) -> Image.Image:
    """A copy of ``image`` with each candidate outlined in a bright mark colour and labelled with its letter."""
    font_size = max(10, min(image.size) // 20)
    return draw_detections(image, candidates, list(letters)[: len(candidates)], palette=MARK_COLOURS,
                           font_size=font_size, captions_inside=True)


def option_probabilities(top_logprobs: Sequence[tuple[str, float]], letters: Sequence[str]) -> np.ndarray | None:
    """Probabilities of the options from one step's ``(token, logprob)`` top list.

    A token counts for an option when, stripped of whitespace (and the BPE space
    markers "Ġ"/"▁" some servers leave in), it equals the option's letter; the mass of
    all such variants ("A", " A") is summed. An option missing from the list had at
    most the smallest listed probability, and all missing ones together at most the
    mass the list leaves over, so each gets ``min(leftover / n_missing, smallest)``
    (0 when the list already holds all the mass). The result is renormalised over the
    options. Returns ``None`` when no option letter is in the list at all (the model
    answered something else), so the caller can fall back to the reply text.
    """
    index = {letter: i for i, letter in enumerate(letters)}
    mass = np.zeros(len(letters))
    probabilities = [math.exp(logprob) for _, logprob in top_logprobs]
    for (token, _), probability in zip(top_logprobs, probabilities):
        option = index.get(bare_token(token))
        if option is not None:
            mass[option] += probability
    if not mass.any():
        return None
    missing = mass == 0
    if missing.any():
        leftover = max(0.0, 1.0 - sum(probabilities))
        mass[missing] = min(leftover / missing.sum(), min(probabilities))
    return mass / mass.sum()


def letter_statistics(top_logprobs: Sequence[tuple[str, float]], letters: Sequence[str]) -> dict[str, Any]:
    """``option_mass`` and ``letter_logprobs`` of a ``Selection`` from one step's ``(token, logprob)`` list."""
    wanted = set(letters)
    mass = sum(math.exp(logprob) for token, logprob in top_logprobs if bare_token(token) in wanted)
    exact = {token: logprob for token, logprob in reversed(list(top_logprobs))}
    return {"option_mass": min(1.0, mass), "letter_logprobs": [exact.get(letter, math.nan) for letter in letters]}


def count_probabilities(top_logprobs: Sequence[tuple[str, float]]) -> np.ndarray | None:
    """The probabilities of ``COUNT_ANSWERS`` from one step's ``(token, logprob)`` list, renormalised
    over the answers listed (case aside); ``None`` when none is."""
    mass = np.zeros(len(COUNT_ANSWERS))
    for token, logprob in top_logprobs:
        bare = bare_token(token).lower()
        if bare in COUNT_ANSWERS:
            mass[COUNT_ANSWERS.index(bare)] += math.exp(logprob)
    return mass / mass.sum() if mass.any() else None


def parse_option_letter(reply: str, letters: Sequence[str], allow_none: bool = False) -> str:
    """The option a free-text reply names: a standalone option letter, or "None" when allowed.

    Raises ``ModelOutputError`` when the reply names no option.
    """
    if allow_none and re.search(rf"\b{NONE_OPTION}\b", reply, flags=re.IGNORECASE):
        return letters[-1]
    for match in re.finditer(r"\b([A-Z])\b", reply):
        if match.group(1) in letters:
            return match.group(1)
    options = "".join(letters)
    raise ModelOutputError(f"the model answered {reply.strip()[:80]!r}, which names none of the options {options}")
