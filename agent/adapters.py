"""One adapter per kind of model (detector, MLLM, target extractor), the only code that calls one.

An adapter wraps a model, loaded or plugged in, and owns what the method should not know about
it: which optional methods of its kind's Protocols it has (``tools.protocols``; a plug-in is
checked when it is plugged in), whether the queries run together go to a batch method in one
call or to one call each (``tools.batching.Coalescer``), taking turns between threads unless
the model serialises itself, and turning plain return values (lists, probabilities) into
``Detections``, ``Selection`` and arrays, a failure of one query kept to that query.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from tools.batching import Coalescer, PartialBatchError
from tools.detections import Detections
from tools.detectors.base import Detector, DetectorExtras, resize_option
from tools.errors import ExtractionFailedError, ModelOutputError, UserInputError
from tools.extraction import ChatExtractor, ExtractedTarget, HeuristicExtractor, align_target, heuristic_extraction
from tools.extraction.base import ExtractorExtras, TargetExtractor
from tools.extraction.reference import ReferenceExtractor, substring_target
from tools.mllm.base import MLLM, MLLMExtras
from tools.mllm.counting import as_count_probabilities
from tools.mllm.selection import Selection, average_orders, cyclic_orders
from tools.mllm.verify import as_yes_probabilities
from tools.protocols import check_plugin
from tools.text import Span

from .answers import as_detections, as_selection
from .configuration import Configuration

# Kind -> (the Protocol every model of the kind follows, the one of its optional methods).
PROTOCOLS = {"detector": (Detector, DetectorExtras), "mllm": (MLLM, MLLMExtras),
             "extractor": (TargetExtractor, ExtractorExtras)}


def check_plugins(plugins: dict[str, Any], config: Configuration) -> None:
    """Check each plug-in (by kind) against its kind's Protocols and the methods ``config`` needs of
    it, before any query reaches it."""
    for kind, plugin in plugins.items():
        if plugin is not None:
            check_plugin(plugin, kind, PROTOCOLS[kind], *needed_methods(kind, config))


def needed_methods(kind: str, config: Configuration) -> tuple[list[tuple[str, ...]], str]:
    """The methods (each a tuple of alternatives) a model of ``kind`` must have for ``config``,
    and what needs them, for the message."""
    why = f"strategy {config.strategy!r} needs"
    if kind == "detector":
        return ([("detect",)] if config.uses_detector else []), why
    if kind == "extractor":
        return ([("extract", "extract_spans")] if config.uses_extractor else []), why
    needed = []
    if config.uses_mllm:
        if config.strategy in ("mllm", "sfa"):
            needed.append(("ground",))
        if config.strategy in ("crs", "sfa+crs"):
            needed.append(("verify", "verify_batch") if config.crs_mode == "verify" else ("select",))
    return needed, why


class Turns:
    """Who may call a model when: one lock per model that does not say it is ``thread_safe``
    (the bundled ones serialise themselves), shared by every adapter of that model."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}

    def of(self, model: Any):
        if getattr(model, "thread_safe", False) is True:
            return nullcontext()
        with self._guard:
            return self._locks.setdefault(id(model), threading.Lock())


class ModelAdapter:
    """What every adapter shares: the model (loaded on first use by ``load``) and calling it in turn."""

    def __init__(self, load: Callable[[], Any], turns: Turns) -> None:
        self._load = load
        self._turns = turns

    @property
    def model(self) -> Any:
        return self._load()

    def has(self, method: str) -> bool:
        return callable(getattr(self.model, method, None))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        model = self.model
        with self._turns.of(model):
            return getattr(model, method)(*args, **kwargs)

    def answers(self, method: str, *args: Any, convert: Callable[[Any, str], Any] | None = None,
                **kwargs: Any) -> list:
        """A batch method's answers (``convert``-ed), failed items as their exceptions in place."""
        try:
            answers = list(self.call(method, *args, **kwargs))
        except PartialBatchError as partial:
            answers = partial.results
        converted = []
        for answer in answers:
            try:
                converted.append(answer if isinstance(answer, BaseException) or convert is None
                                 else convert(answer, f"{type(self).kind}.{method}"))
            except ModelOutputError as error:
                converted.append(error)
        return converted


class DetectorAdapter(ModelAdapter):
    """The specialist: ``detect_many`` of several ``(text, focus)`` queries on one image, batched
    when the detector has ``detect_many``, and across the images of queries run together when it
    has ``detect_batch``. ``resize``: the profile's resize, passed to a detector that offers it."""

    kind = "detector"

    def __init__(self, load: Callable[[], Any], turns: Turns, batch_size: int, resize: str) -> None:
        super().__init__(load, turns)
        self.resize = resize
        self._across_images = Coalescer(self._on_one_image, self._across, batch_size)

    def for_query(self) -> "QueryDetector":
        """A view of this detector for one query, which remembers its answers."""
        return QueryDetector(self)

    def resize_option(self) -> dict[str, str]:
        """``resize=`` for a detector that offers the profile's (``GroundingDinoDetector.resizes``)."""
        return resize_option(self.model, self.resize)

    def detect_many(self, image: Image.Image, queries: Sequence[tuple[str, Span | None]]) -> list[Detections]:
        item = (image, tuple(queries))
        return self._across_images(item) if self.has("detect_batch") else self._on_one_image(item)

    def _on_one_image(self, item) -> list[Detections]:
        image, queries = item
        resize = self.resize_option()
        if len(queries) > 1 and self.has("detect_many"):
            texts, focuses = zip(*queries)
            answers = self.call("detect_many", image, list(texts), list(focuses), **resize)
            return [as_detections(answer, "detector.detect_many") for answer in answers]
        return [as_detections(self.call("detect", image, text, focus=focus, **resize), "detector.detect")
                for text, focus in queries]

    def _across(self, _, items) -> list:
        flat = [(image, text, focus) for image, queries in items for text, focus in queries]
        images, texts, focuses = (list(column) for column in zip(*flat))
        answers = self.answers("detect_batch", images, texts, focuses, convert=as_detections)
        grouped, start = [], 0
        for _, queries in items:
            part = answers[start:start + len(queries)]
            start += len(queries)
            grouped.append(next((answer for answer in part if isinstance(answer, BaseException)), None) or part)
        return grouped


class QueryDetector:
    """The detector as one query sees it: each ``(text, focus)`` detected at most once (routing
    and the path after it ask for the same text), the missing ones in one batched call."""

    def __init__(self, adapter: DetectorAdapter) -> None:
        self._adapter = adapter
        self._answers: dict[tuple[str, Span | None], Detections] = {}

    def detect_many(self, image: Image.Image, queries: Sequence[tuple[str, Span | None]]) -> list[Detections]:
        missing = [query for query in dict.fromkeys(queries) if query not in self._answers]
        if missing:
            self._answers.update(zip(missing, self._adapter.detect_many(image, missing)))
        return [self._answers[query] for query in queries]


class MLLMAdapter(ModelAdapter):
    """The MLLM: grounding, CRS selection (in several candidate orders), verification and counting,
    each batched across the queries run together when the model has the ``_batch`` method.
    ``reading``: the profile's way of reading a CRS answer, passed to a ``select`` that takes it."""

    kind = "mllm"

    def __init__(self, load: Callable[[], Any], turns: Turns, batch_size: int, reading: str) -> None:
        super().__init__(load, turns)
        self.reading = reading
        self._ground = Coalescer(self._ground_one, self._ground_many, batch_size)
        self._select = Coalescer(self._select_one, self._select_many, batch_size)
        self._verify = Coalescer(self._verify_one, self._verify_many, batch_size)
        self._count = Coalescer(self._count_one, self._count_many, batch_size)

    def ground(self, image: Image.Image, expression: str, focus: str | None) -> Detections:
        item = (image, expression, focus)
        return self._ground(item) if self.has("ground_batch") else self._ground_one(item)

    def _ground_one(self, item) -> Detections:
        image, expression, focus = item
        return as_detections(self.call("ground", image, expression, focus=focus), "mllm.ground")

    def _ground_many(self, _, items) -> list:
        return self.answers("ground_batch", *(list(column) for column in zip(*items)), convert=as_detections)

    def select(self, image: Image.Image, expression: str, candidates: Detections, allow_none: bool) -> Selection:
        item = (image, expression, candidates, allow_none)
        return self._select(item, key=allow_none) if self.has("select_batch") else self._select_one(item)

    def _select_one(self, item) -> Selection:
        image, expression, candidates, allow_none = item
        answer = self.call("select", image, expression, candidates, allow_none=allow_none,
                           **self._reading("select"))
        return as_selection(answer, candidates, allow_none)

    def _select_many(self, allow_none: bool, items) -> list:
        images, expressions, candidates = (list(column) for column in zip(*(item[:3] for item in items)))
        answers = self.answers("select_batch", images, expressions, candidates, allow_none,
                               **self._reading("select_batch"))
        return [answer if isinstance(answer, BaseException) else as_selection(answer, boxes, allow_none)
                for answer, boxes in zip(answers, candidates)]

    def _reading(self, method: str) -> dict[str, str]:
        """``reading=`` for ``method`` when the profile reads generated answers and the method takes
        it (``tools.mllm.base.MLLM``); without it, a plug-in's letter probabilities stand."""
        if self.reading == "letter" or "reading" not in inspect.signature(getattr(self.model, method)).parameters:
            return {}
        return {"reading": self.reading}

    def select_in_orders(self, image: Image.Image, expression: str, candidates: Detections, allow_none: bool,
                         orders: int) -> Selection:
        """``select`` asked with the candidates in ``orders`` cyclic orders (one batched call when the
        MLLM has ``select_batch``) and averaged per candidate (``selection.average_orders``)."""
        permutations = cyclic_orders(len(candidates), orders)
        if len(permutations) < 2:
            return self.select(image, expression, candidates, allow_none)
        items = [(image, expression, candidates[order], allow_none) for order in permutations]
        answers = (self._select_many(allow_none, items) if self.has("select_batch")
                   else [self._select_one(item) for item in items])
        failed = next((answer for answer in answers if isinstance(answer, BaseException)), None)
        if failed is not None:
            raise failed
        return average_orders(candidates, answers, permutations)

    def verify(self, image: Image.Image, expression: str, candidates: Detections) -> np.ndarray:
        """``p(yes)`` of each candidate (``crs_mode="verify"``)."""
        if not (self.has("verify") or self.has("verify_batch")):
            raise UserInputError(f"crs_mode=verify needs an MLLM with verify(image, expression, candidates); "
                                 f"{type(self.model).__name__} has none (use crs_mode=choice)")
        if len(candidates) == 0:
            return np.zeros(0)
        item = (image, expression, candidates)
        return self._verify(item) if self.has("verify_batch") else self._verify_one(item)

    def _verify_one(self, item) -> np.ndarray:
        return as_yes_probabilities(self.call("verify", *item), len(item[2]), "mllm.verify")

    def _verify_many(self, _, items) -> list:
        images, expressions, candidates = (list(column) for column in zip(*items))
        answers = self.answers("verify_batch", images, expressions, candidates)
        converted = []
        for answer, boxes in zip(answers, candidates):
            try:
                converted.append(answer if isinstance(answer, BaseException)
                                 else as_yes_probabilities(answer, len(boxes), "mllm.verify_batch"))
            except ModelOutputError as error:
                converted.append(error)
        return converted

    def count(self, image: Image.Image, expression: str, candidates: Detections) -> np.ndarray:
        """The probability of each count of ``COUNT_ANSWERS`` (``count_mode`` image or both)."""
        if not (self.has("count") or self.has("count_batch")):
            raise UserInputError(f"count_mode image needs an MLLM with count(image, expression, candidates); "
                                 f"{type(self.model).__name__} has none (use count_mode=text)")
        item = (image, expression, candidates)
        return self._count(item) if self.has("count_batch") else self._count_one(item)

    def _count_one(self, item) -> np.ndarray:
        return as_count_probabilities(self.call("count", *item), "mllm.count")

    def _count_many(self, _, items) -> list:
        return self.answers("count_batch", *(list(column) for column in zip(*items)),
                            convert=as_count_probabilities)


class ExtractorAdapter(ModelAdapter):
    """The target extractor: the target of one expression as an ``ExtractedTarget`` (a plug-in's
    phrase aligned to the expression), with the fallback that was needed, and the targets of many
    expressions asked at once. ``target_span``: the profile's (``tools.profiles``)."""

    kind = "extractor"

    def __init__(self, load: Callable[[], Any], turns: Turns, target_span: str) -> None:
        super().__init__(load, turns)
        self.target_span = target_span

    def prefetch(self, expressions: Sequence[str]) -> None:
        """Ask a model-backed extractor about many expressions at once (it batches them, 8 per
        prompt by default, and caches the answers), so later one-by-one ``extract`` calls are
        served from its cache."""
        if isinstance(self.model, (ChatExtractor, ReferenceExtractor)):
            self.model.extract_spans(list(dict.fromkeys(expressions)))

    def extract(self, expression: str, given: ExtractedTarget | str | None = None
                ) -> tuple[ExtractedTarget, str | None]:
        """The target of ``expression`` (``given``: the caller's, not asked of the extractor) and, when a
        fallback was needed, why. ``ExtractionFailedError`` when the reference extraction dropped it."""
        if isinstance(given, ExtractedTarget):
            target = given
        elif given is not None or not self.has("extract_spans"):
            phrase = given if given is not None else list(self.call("extract", [expression]))[0]
            span = align_target(expression, phrase) if phrase else None
            target = ExtractedTarget(None if span is None else expression[span[0] : span[1]], span, "model", phrase)
        else:
            target = self.call("extract_spans", [expression])[0]
        if target.source == "failed":
            raise ExtractionFailedError(
                f"target extraction gave no target for {expression!r} (reply {_preview(target.answer)}): the authors' "
                "script drops its batch and the sample")
        if self.target_span == "substring" and (target.answer or target.phrase):
            return substring_target(expression, target.answer or target.phrase, target.source)
        if target.span is None:
            fallback = heuristic_extraction(expression, target.answer)
            return fallback, f"target extraction gave {target.answer!r}: used the heuristic target"
        if target.source == "heuristic" and not isinstance(self.model, HeuristicExtractor):
            return target, f"target extraction gave {target.answer!r}: used the heuristic target"
        return target, None


def _preview(text: str | None, limit: int = 120) -> str:
    return "none" if text is None else repr(text[:limit] + ("..." if len(text) > limit else ""))
