"""Target extractors: an OpenAI-compatible chat model, a local text generator, or no model.

Model-backed extractors ask about ``per_prompt`` expressions per call (8, as the
reference does), keyed "1".."n", and then align every answer to its expression. An
item whose answer is missing, unparseable or cannot be aligned falls back to the
model-free ``heuristic_target``, and its ``ExtractedTarget.source`` says so.
A failing server (``RemoteServiceError`` after retries) is raised, not papered over,
so a run never silently degrades to the heuristic; results so far stay in the cache.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol, Sequence

from ..batching import chunks
from ..defaults import BATCH_SIZE, EXTRACTION_PER_PROMPT
from ..errors import UserInputError
from ..openai_client import ChatCompletionsClient, RetryPolicy
from .align import align_target, heuristic_target
from .base import ExtractedTarget
from .cache import ExtractionCache
from .count import ExpectedCount
from .parsing import extraction_prompt, extraction_prompt_prefix, parse_answers

logger = logging.getLogger(__name__)


class TextGenerator(Protocol):
    """Anything that continues a text prompt, e.g. the already loaded Qwen MLLM used text-only."""

    def generate_text(self, prompt: str, max_new_tokens: int = ...) -> str: ...


def heuristic_extraction(expression: str, answer: str | None = None) -> ExtractedTarget:
    """The model-free target of ``expression`` (``phrase=None`` for a blank one)."""
    if not expression or not expression.strip():
        return ExtractedTarget(None, None, "heuristic", answer)
    phrase, span = heuristic_target(expression)
    return ExtractedTarget(phrase, span, "heuristic", answer)


class HeuristicExtractor:
    """Model-free extraction: the subject noun phrase found by ``heuristic_target``."""

    thread_safe = True  # no state

    def extract_spans(self, expressions: Sequence[str]) -> list[ExtractedTarget]:
        return [heuristic_extraction(expression) for expression in expressions]

    def extract(self, expressions: Sequence[str]) -> list[str | None]:
        return [target.phrase for target in self.extract_spans(expressions)]

    def __repr__(self) -> str:
        return "HeuristicExtractor()"


class ChatExtractor(ABC):
    """Shared batching, caching and fallback of the model-backed extractors.

    Subclasses implement ``_complete(prompt) -> reply``. ``cache`` is an
    ``ExtractionCache`` (or a JSON file path for one); by default a fresh in-memory one.
    Heuristic fallbacks are cached too: at REX's temperature 0 the model would answer the same.
    ``per_prompt`` expressions share one prompt; ``concurrency`` prompts are asked at once (a
    remote server answers them in parallel; a local model one after the other). ``with_count``
    asks with the count prompt, whose answers also say how many objects each expression names
    (``ExtractedTarget.count``); the default is REX's prompt with the authors' in-context examples
    (``ReferenceExtractor`` sends the authors' messages themselves).
    """

    def __init__(
        self,
        *,
        per_prompt: int = EXTRACTION_PER_PROMPT,
        concurrency: int = 1,
        cache: ExtractionCache | str | Path | None = None,
        prompts_dir: str | Path | None = None,
        with_count: bool = False,
    ) -> None:
        if per_prompt < 1 or concurrency < 1:
            raise UserInputError(f"per_prompt and concurrency must be at least 1, got {per_prompt}, {concurrency}")
        self.per_prompt = per_prompt
        self.concurrency = concurrency
        self.cache = cache if isinstance(cache, ExtractionCache) else ExtractionCache(cache)
        self.prompts_dir = prompts_dir
        self.with_count = with_count

    @abstractmethod
    def _complete(self, prompt: str) -> str:
        """The model's reply to one extraction prompt."""

    def extract(self, expressions: Sequence[str]) -> list[str | None]:
        """One target phrase per expression, as written in the expression."""
        return [target.phrase for target in self.extract_spans(expressions)]

    def extract_spans(self, expressions: Sequence[str]) -> list[ExtractedTarget]:
        """One ``ExtractedTarget`` per expression; only expressions not cached are asked about."""
        pending = [e for e in dict.fromkeys(expressions) if e not in self.cache and e and e.strip()]
        batches = list(chunks(pending, self.per_prompt))
        prompts = [extraction_prompt(batch, self.prompts_dir, with_count=self.with_count) for batch in batches]
        if self.concurrency > 1 and len(prompts) > 1:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
                replies = [pool.submit(self._complete, prompt) for prompt in prompts]
            outcomes = [future.exception() or future.result() for future in replies]
        else:
            outcomes = [self._complete(prompt) for prompt in prompts]
        for batch, reply in zip(batches, outcomes):
            if isinstance(reply, BaseException):
                continue  # raised below, once the answered batches are cached
            answers = parse_answers(reply, len(batch))
            if not any(phrase for phrase, _ in answers):
                logger.warning("no usable targets in the extraction reply %r; using the heuristic", reply[:200])
            self.cache.update({e: self._resolve(e, *answer) for e, answer in zip(batch, answers)})
        failed = next((reply for reply in outcomes if isinstance(reply, BaseException)), None)
        if failed is not None:
            raise failed
        return [self.cache.get(e) or heuristic_extraction(e) for e in expressions]

    @staticmethod
    def _resolve(expression: str, answer: str | None, count: ExpectedCount | None = None) -> ExtractedTarget:
        span = align_target(expression, answer)
        if span is None:
            return replace(heuristic_extraction(expression, answer), count=count)
        return ExtractedTarget(expression[span[0] : span[1]], span, "model", answer, count)


class OpenAIChatExtractor(ChatExtractor):
    """Extraction with any OpenAI-compatible chat model (GPT-3.5-turbo in the paper).

    ``base_url``/``api_key`` default to ``OPENAI_BASE_URL``/``OPENAI_API_KEY``;
    ``retry`` is the ``RetryPolicy`` of each request; ``concurrency`` prompts are in flight at
    once. Requests use ``temperature`` (0; ``None`` sends none: the server's default).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 512,
        temperature: float | None = 0,
        retry: RetryPolicy | None = None,
        per_prompt: int = EXTRACTION_PER_PROMPT,
        concurrency: int = BATCH_SIZE,
        cache: ExtractionCache | str | Path | None = None,
        prompts_dir: str | Path | None = None,
        with_count: bool = False,
    ) -> None:
        super().__init__(per_prompt=per_prompt, concurrency=concurrency, cache=cache, prompts_dir=prompts_dir,
                         with_count=with_count)
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.client = ChatCompletionsClient(base_url, api_key, retry=retry)

    def _complete(self, prompt: str) -> str:
        response = self.client.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.max_tokens,
            **({} if self.temperature is None else {"temperature": self.temperature}),
        )
        return response.choices[0].message.content or ""

    def __repr__(self) -> str:
        return f"OpenAIChatExtractor(model={self.model!r}, base_url={self.client.base_url!r}, cache={self.cache!r})"


class LocalChatExtractor(ChatExtractor):
    """Extraction with a local model that has ``generate_text(prompt, max_new_tokens)``.

    Reusing the MLLM already loaded for grounding (text-only) needs no API key and no
    second model in memory. A generator whose ``generate_text`` takes ``fixed_prefix``
    (``QwenVL``) is given the prompt's fixed part, so it runs the instructions and
    examples once and each request pays only for its own expressions.
    """

    def __init__(
        self,
        generator: TextGenerator,
        *,
        max_new_tokens: int = 512,
        per_prompt: int = EXTRACTION_PER_PROMPT,
        cache: ExtractionCache | str | Path | None = None,
        prompts_dir: str | Path | None = None,
        with_count: bool = False,
    ) -> None:
        super().__init__(per_prompt=per_prompt, cache=cache, prompts_dir=prompts_dir, with_count=with_count)
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self._prefix = {}
        if "fixed_prefix" in inspect.signature(generator.generate_text).parameters:
            self._prefix = {"fixed_prefix": extraction_prompt_prefix(prompts_dir, with_count=with_count)}

    def _complete(self, prompt: str) -> str:
        return self.generator.generate_text(prompt, max_new_tokens=self.max_new_tokens, **self._prefix)

    def __repr__(self) -> str:
        return f"LocalChatExtractor(generator={type(self.generator).__name__}, cache={self.cache!r})"
