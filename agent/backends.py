"""The models one agent uses: loaded lazily from settings, or plugged in by the user.

Plug-ins only need the protocol methods and may return plain Python values:
``detect``/``ground`` -> ``Detections`` or a ``(boxes, scores)`` pair of lists;
``select`` -> ``Selection`` or option probabilities (candidates in order, "None"
last when allowed); ``extract`` -> one phrase (or ``None``) per expression.

Queries run together (``tools.batching``) have their calls coalesced into the optional batch
methods ``ground_batch(images, expressions, focuses)``, ``select_batch(images, expressions,
candidates, allow_none)``, ``verify_batch(images, expressions, candidates)``, ``count_batch(images,
expressions, candidates)`` and ``detect_batch(images, texts, focuses)``; a backend without them is
called once per query.
``verify`` (per-candidate yes/no, ``crs_mode="verify"``) is optional: ``p(yes)`` per candidate;
so is ``count`` (``count_mode="image"``): the probability of each count 0..5 and "more", or a count.
Calls into a plug-in take turns unless it says ``thread_safe = True`` (the bundled models
serialise themselves).
"""

from __future__ import annotations

import hashlib
import inspect
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from tools import boxes as box_ops
from tools.batching import Coalescer, PartialBatchError
from tools.defaults import OPENAI_PREFIX
from tools.detections import Detections
from tools.detectors.base import resize_option
from tools.text import Span
from tools.errors import ExtractionFailedError, ModelOutputError, UserInputError
from tools.extraction import ChatExtractor, ExtractedTarget, HeuristicExtractor, LocalChatExtractor
from tools.extraction import OpenAIChatExtractor
from tools.extraction import align_target, heuristic_extraction
from tools.extraction.reference import ReferenceExtractor, substring_target
from tools.mllm.counting import as_count_probabilities
from tools.mllm.crs import option_letters
from tools.mllm.openai_compat import OpenAICompatibleMLLM
from tools.mllm.selection import Selection, average_orders, cyclic_orders
from tools.mllm.verify import as_yes_probabilities

from .configuration import Configuration



# What every PEFT adapter folder holds.
ADAPTER_CONFIG = "adapter_config.json"


class Backends:
    """Detector, MLLM and target extractor of one agent, each loaded on first use and kept.

    ``with_config`` gives the backends of other method settings (strategy, focus, ...)
    over the same model slots: a model either of them loads serves both.
    """

    def __init__(self, config: Configuration, *, detector=None, mllm=None, extractor=None) -> None:
        self.config = config
        given = {"detector": detector, "mllm": mllm, "extractor": extractor}
        # Slot name -> model. A plug-in extractor fills "extractor"; loaded ones are kept per
        # resolved ``llm`` choice ("extractor:mllm", ...), since "auto" depends on the strategy.
        self._models: dict[str, Any] = {name: model for name, model in given.items() if model is not None}
        self._loading = threading.RLock()  # one thread loads a model; the others wait for it
        self._plugin_locks: dict[int, threading.Lock] = {}
        self._ground = Coalescer(self._ground_one, self._ground_many, config.batch_size)
        self._select = Coalescer(self._select_one, self._select_many, config.batch_size)
        self._verify = Coalescer(self._verify_one, self._verify_many, config.batch_size)
        self._count = Coalescer(self._count_one, self._count_many, config.batch_size)
        self._detect = Coalescer(self._detect_one, self._detect_many_images, config.batch_size)

    def with_config(self, config: Configuration) -> "Backends":
        """Backends for ``config`` sharing these ones' models; ``config`` must name the same models."""
        shared = Backends(config)
        shared._models, shared._loading, shared._plugin_locks = self._models, self._loading, self._plugin_locks
        return shared

    def check_checkpoints(self) -> None:
        """Find every checkpoint the strategy will load (local folder, cache or Hub) without loading
        any, so a missing one is reported before minutes are spent loading another."""
        from tools.checkpoints import resolve_checkpoint

        config = self.config
        wanted = []
        if config.uses_detector and "detector" not in self._models:
            wanted.append((config.detector, "or pass --detector PATH"))
        if config.uses_mllm and "mllm" not in self._models and not config.mllm.startswith(OPENAI_PREFIX):
            wanted.append((config.mllm, "or pass --mllm PATH"))
            if config.adapter:
                wanted.append((config.adapter, "or pass --adapter PATH"))
        for name, hint in wanted:
            resolved = Path(resolve_checkpoint(name, cache_dir=None, hint=hint))
            if name == config.adapter and resolved.exists() and not (resolved / ADAPTER_CONFIG).is_file():
                raise UserInputError(f"--adapter {name!r} is not a PEFT adapter folder (it has no {ADAPTER_CONFIG}); "
                                     "pass the folder finetune wrote (OUTPUT/adapter)")

    @property
    def loaded(self) -> set[str]:
        """The backends loaded or plugged in so far: some of "detector", "mllm", "extractor"."""
        return {name.split(":")[0] for name in self._models}

    @property
    def detector(self):
        with self._loading:
            return self._detector()

    def _detector(self):
        if "detector" not in self._models:
            from tools.detectors.auto import load_detector

            detector = load_detector(self.config.detector, device=self.config.device, dtype=self.config.detector_dtype)
            if self.config.cache_dir:
                from tools.detectors.cache import CachedDetector

                # The dtype and the focus scoring change the answers; the device only by rounding.
                scoring = getattr(detector, "focus_score", None)
                model_name = f"{self.config.detector} dtype={self.config.detector_dtype} focus={scoring}"
                detector = CachedDetector(detector, Path(self.config.cache_dir) / "detections", model_name)
            self._models["detector"] = detector
        return self._models["detector"]

    @property
    def mllm(self):
        with self._loading:
            if "mllm" not in self._models:
                self._models["mllm"] = load_mllm(self.config)
            return self._models["mllm"]

    @property
    def extractor(self):
        with self._loading:
            return self._extractor()

    def _extractor(self):
        if "extractor" in self._models:
            return self._models["extractor"]
        choice = self.config.llm
        if choice == "auto":
            choice = "mllm" if self.config.uses_mllm else "heuristic"
        slot = f"extractor:{choice}" + self._extraction_variant()
        if slot not in self._models:
            self._models[slot] = self._load_extractor(choice)
        return self._models[slot]

    def _extraction_variant(self) -> str:
        """What besides the model changes the extractor's answers: the authors' messages, the count
        prompt, a temperature other than REX's 0."""
        config = self.config
        variant = " reference" if config.behaviour.extraction == "reference" else ""
        variant += " +count" if config.needs_count and not variant else ""
        temperature = config.extraction_temperature
        return variant + ("" if temperature == 0 else f" temperature={'default' if temperature is None else temperature}")

    def _load_extractor(self, choice: str):
        if choice == "heuristic":
            return HeuristicExtractor()
        if self.config.behaviour.extraction == "reference":
            return self._load_reference_extractor(choice)
        # Answers depend on the expected count: ask for it in the same call (the count prompt).
        count = {"with_count": True} if self.config.needs_count else {}
        if choice == "mllm":
            if isinstance(self.mllm, OpenAICompatibleMLLM):  # the same served model, as a chat model
                name = f"{OPENAI_PREFIX}{self.mllm.model}"
                return OpenAIChatExtractor(self.mllm.model, base_url=self.mllm.client.base_url,
                                           temperature=self.config.extraction_temperature,
                                           concurrency=self.config.batch_size, cache=self._extraction_cache(name),
                                           **count)
            if not hasattr(self.mllm, "generate_text"):
                return HeuristicExtractor()  # a plug-in MLLM without text-only generation
            return LocalChatExtractor(self.mllm, cache=self._extraction_cache(self._local_name()), **count)
        if choice.startswith(OPENAI_PREFIX):
            return OpenAIChatExtractor(choice[len(OPENAI_PREFIX) :], temperature=self.config.extraction_temperature,
                                       concurrency=self.config.batch_size, cache=self._extraction_cache(choice),
                                       **count)
        raise _unknown_llm(choice)

    def _load_reference_extractor(self, choice: str):
        """The authors' extraction (``tools.extraction.reference``) asked of the model ``choice`` names."""
        served = {"temperature": self.config.extraction_temperature, "concurrency": self.config.batch_size}
        if choice == "mllm":
            if isinstance(self.mllm, OpenAICompatibleMLLM):
                name = f"{OPENAI_PREFIX}{self.mllm.model}"
                return ReferenceExtractor.served(self.mllm.model, base_url=self.mllm.client.base_url,
                                                 cache=self._extraction_cache(name), **served)
            if not hasattr(self.mllm, "chat"):
                return HeuristicExtractor()  # a plug-in MLLM without chat
            return ReferenceExtractor.local(self.mllm, cache=self._extraction_cache(self._local_name()))
        if choice.startswith(OPENAI_PREFIX):
            return ReferenceExtractor.served(choice[len(OPENAI_PREFIX):], cache=self._extraction_cache(choice),
                                             **served)
        raise _unknown_llm(choice)

    def _local_name(self) -> str:
        return self.config.mllm + (f" adapter={self.config.adapter}" if self.config.adapter else "")

    def _extraction_cache(self, model: str) -> Path | None:
        """The answers file of extraction ``model`` under ``cache_dir`` (``None`` without one).

        One file per model, named after it (readable part + hash), so answers of
        different models never mix.
        """
        if not self.config.cache_dir:
            return None
        model += self._extraction_variant()  # the answers of other prompts or temperatures are kept apart
        readable = re.sub(r"[^A-Za-z0-9.-]+", "_", model).strip("_")[-60:]
        digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]
        return Path(self.config.cache_dir) / f"extraction-{readable}-{digest}.json"

    # Calls that accept plug-ins' plain return values, batched across the queries run together.

    def detect(self, image: Image.Image, text: str, focus: tuple[int, int] | None) -> Detections:
        return self.detect_many(image, [(text, focus)])[0]

    def detect_many(self, image: Image.Image, queries: Sequence[tuple[str, Span | None]]) -> list[Detections]:
        """Several ``(text, focus)`` queries on one image: batched when the detector has
        ``detect_many``, and across queries' images when it has ``detect_batch``."""
        if hasattr(self.detector, "detect_batch"):
            return self._detect((image, tuple(queries)))
        return self._detect_one((image, tuple(queries)))

    def _detect_one(self, item) -> list[Detections]:
        image, queries = item
        resize = self._resize()
        if len(queries) > 1 and hasattr(self.detector, "detect_many"):
            texts, focuses = zip(*queries)
            answers = self._call(self.detector, "detect_many", image, list(texts), list(focuses), **resize)
            return [as_detections(answer, "detector.detect_many") for answer in answers]
        return [as_detections(self._call(self.detector, "detect", image, text, focus=focus, **resize),
                              "detector.detect") for text, focus in queries]

    def _resize(self) -> dict[str, str]:
        """``resize=`` for a detector that offers the profile's (``GroundingDinoDetector.resizes``)."""
        return resize_option(self.detector, self.config.behaviour.detector_resize)

    def _detect_many_images(self, _, items) -> list:
        flat = [(image, text, focus) for image, queries in items for text, focus in queries]
        images, texts, focuses = (list(column) for column in zip(*flat))
        answers = _answers(lambda: self._call(self.detector, "detect_batch", images, texts, focuses),
                           "detector.detect_batch", as_detections)
        grouped, start = [], 0
        for _, queries in items:
            part = answers[start:start + len(queries)]
            start += len(queries)
            failed = next((answer for answer in part if isinstance(answer, BaseException)), None)
            grouped.append(failed or part)
        return grouped

    def ground(self, image: Image.Image, expression: str, focus: str | None) -> Detections:
        if hasattr(self.mllm, "ground_batch"):
            return self._ground((image, expression, focus))
        return self._ground_one((image, expression, focus))

    def _ground_one(self, item) -> Detections:
        image, expression, focus = item
        return as_detections(self._call(self.mllm, "ground", image, expression, focus=focus), "mllm.ground")

    def _ground_many(self, _, items) -> list:
        images, expressions, focuses = (list(column) for column in zip(*items))
        return _answers(lambda: self._call(self.mllm, "ground_batch", images, expressions, focuses),
                        "mllm.ground_batch", as_detections)

    def select(self, image: Image.Image, expression: str, candidates: Detections, allow_none: bool) -> Selection:
        if hasattr(self.mllm, "select_batch"):
            return self._select((image, expression, candidates, allow_none), key=allow_none)
        return self._select_one((image, expression, candidates, allow_none))

    def _select_one(self, item) -> Selection:
        image, expression, candidates, allow_none = item
        answer = self._call(self.mllm, "select", image, expression, candidates, allow_none=allow_none,
                            **self._reading("select"))
        return as_selection(answer, candidates, allow_none)

    def _select_many(self, allow_none: bool, items) -> list:
        images, expressions, candidates = (list(column) for column in zip(*(item[:3] for item in items)))
        answers = _answers(lambda: self._call(self.mllm, "select_batch", images, expressions, candidates, allow_none,
                                              **self._reading("select_batch")), "mllm.select_batch")
        return [answer if isinstance(answer, BaseException) else as_selection(answer, boxes, allow_none)
                for answer, boxes in zip(answers, candidates)]

    def _reading(self, method: str) -> dict[str, str]:
        """``reading=`` for the MLLM's ``method`` when the profile reads generated answers and the
        method takes it (``tools.mllm.base.MLLM``); plug-ins without it answer with letter probabilities."""
        reading = self.config.behaviour.crs_reading
        if reading == "letter" or "reading" not in inspect.signature(getattr(self.mllm, method)).parameters:
            return {}
        return {"reading": reading}

    def select_in_orders(self, image: Image.Image, expression: str, candidates: Detections, allow_none: bool,
                         orders: int) -> Selection:
        """``select`` asked with the candidates in ``orders`` cyclic orders (one batched call when the
        MLLM has ``select_batch``) and averaged per candidate (``selection.average_orders``)."""
        permutations = cyclic_orders(len(candidates), orders)
        if len(permutations) < 2:
            return self.select(image, expression, candidates, allow_none)
        items = [(image, expression, candidates[order], allow_none) for order in permutations]
        if hasattr(self.mllm, "select_batch"):
            answers = self._select_many(allow_none, items)
        else:
            answers = [self._select_one(item) for item in items]
        failed = next((answer for answer in answers if isinstance(answer, BaseException)), None)
        if failed is not None:
            raise failed
        return average_orders(candidates, answers, permutations)

    def verify(self, image: Image.Image, expression: str, candidates: Detections) -> np.ndarray:
        """``p(yes)`` of each candidate (``crs_mode="verify"``), batched across queries when the MLLM
        has ``verify_batch``."""
        if not (hasattr(self.mllm, "verify") or hasattr(self.mllm, "verify_batch")):
            raise UserInputError(f"crs_mode=verify needs an MLLM with verify(image, expression, candidates); "
                                 f"{type(self.mllm).__name__} has none (use crs_mode=choice)")
        if len(candidates) == 0:
            return np.zeros(0)
        if hasattr(self.mllm, "verify_batch"):
            return self._verify((image, expression, candidates))
        return self._verify_one((image, expression, candidates))

    def _verify_one(self, item) -> np.ndarray:
        image, expression, candidates = item
        answer = self._call(self.mllm, "verify", image, expression, candidates)
        return as_yes_probabilities(answer, len(candidates), "mllm.verify")

    def _verify_many(self, _, items) -> list:
        images, expressions, candidates = (list(column) for column in zip(*items))
        answers = _answers(lambda: self._call(self.mllm, "verify_batch", images, expressions, candidates),
                           "mllm.verify_batch")
        converted = []
        for answer, boxes in zip(answers, candidates):
            try:
                converted.append(answer if isinstance(answer, BaseException)
                                 else as_yes_probabilities(answer, len(boxes), "mllm.verify_batch"))
            except ModelOutputError as error:
                converted.append(error)
        return converted

    def count(self, image: Image.Image, expression: str, candidates: Detections) -> np.ndarray:
        """The MLLM's probability of each count of ``COUNT_ANSWERS`` (``count_mode`` image or both),
        batched across queries when it has ``count_batch``."""
        if not (hasattr(self.mllm, "count") or hasattr(self.mllm, "count_batch")):
            raise UserInputError(f"count_mode image needs an MLLM with count(image, expression, candidates); "
                                 f"{type(self.mllm).__name__} has none (use count_mode=text)")
        if hasattr(self.mllm, "count_batch"):
            return self._count((image, expression, candidates))
        return self._count_one((image, expression, candidates))

    def _count_one(self, item) -> np.ndarray:
        return as_count_probabilities(self._call(self.mllm, "count", *item), "mllm.count")

    def _count_many(self, _, items) -> list:
        images, expressions, candidates = (list(column) for column in zip(*items))
        return _answers(lambda: self._call(self.mllm, "count_batch", images, expressions, candidates),
                        "mllm.count_batch", as_count_probabilities)

    def _call(self, model, method: str, *args, **kwargs):
        """``model.method(...)``, taking turns with the other threads unless the model serialises
        itself (a ``_lock``) or says it is ``thread_safe``."""
        if hasattr(model, "_lock") or getattr(model, "thread_safe", False):
            return getattr(model, method)(*args, **kwargs)
        with self._loading:
            lock = self._plugin_locks.setdefault(id(model), threading.Lock())
        with lock:
            return getattr(model, method)(*args, **kwargs)

    def prefetch_targets(self, expressions: Sequence[str]) -> None:
        """Ask a model-backed extractor about many expressions at once (it batches them, 8 per
        prompt by default, and caches the answers), so later one-by-one ``extract`` calls are
        served from its cache."""
        if self.config.uses_extractor and isinstance(self.extractor, (ChatExtractor, ReferenceExtractor)):
            self.extractor.extract_spans(list(dict.fromkeys(expressions)))

    def extract(self, expression: str, given: ExtractedTarget | str | None = None
                ) -> tuple[ExtractedTarget, str | None]:
        """The target of ``expression`` (``given``: the caller's, not asked of the extractor) and, when a
        fallback was needed, why. ``ExtractionFailedError`` when the reference extraction dropped it."""
        if isinstance(given, ExtractedTarget):
            target = given
        elif given is not None or not hasattr(self.extractor, "extract_spans"):
            phrase = given if given is not None else list(self._call(self.extractor, "extract", [expression]))[0]
            span = align_target(expression, phrase) if phrase else None
            target = ExtractedTarget(None if span is None else expression[span[0] : span[1]], span, "model", phrase)
        else:
            target = self._call(self.extractor, "extract_spans", [expression])[0]
        if target.source == "failed":
            raise ExtractionFailedError(
                f"target extraction gave no target for {expression!r} (reply {_preview(target.answer)}): the authors' "
                "script drops its batch and the sample")
        if self.config.behaviour.target_span == "substring" and (target.answer or target.phrase):
            return substring_target(expression, target.answer or target.phrase, target.source)
        if target.span is None:
            fallback = heuristic_extraction(expression, target.answer)
            return fallback, f"target extraction gave {target.answer!r}: used the heuristic target"
        if target.source == "heuristic" and not isinstance(self.extractor, HeuristicExtractor):
            return target, f"target extraction gave {target.answer!r}: used the heuristic target"
        return target, None


def _unknown_llm(choice: str) -> UserInputError:
    return UserInputError(f"unknown llm {choice!r}; use auto, mllm, heuristic or openai:MODEL")


def _preview(text: str | None, limit: int = 120) -> str:
    return "none" if text is None else repr(text[:limit] + ("..." if len(text) > limit else ""))


def _answers(call, source: str, convert=None) -> list:
    """A batch method's answers (``convert``-ed), failed items as their exceptions in place."""
    try:
        answers = list(call())
    except PartialBatchError as partial:
        answers = partial.results
    if convert is None:
        return answers
    converted = []
    for answer in answers:
        try:
            converted.append(answer if isinstance(answer, BaseException) else convert(answer, source))
        except ModelOutputError as error:
            converted.append(error)
    return converted


def load_mllm(config: Configuration):
    """The MLLM named by ``config.mllm``: ``openai:MODEL`` for a server, else a local checkpoint
    whose class (``QwenVL``, ``InternVL``) its config decides."""
    if config.mllm.startswith(OPENAI_PREFIX):
        if config.adapter:
            raise UserInputError("--adapter applies to local models; load it into the server for openai:MODEL")
        model = config.mllm[len(OPENAI_PREFIX) :]
        return OpenAICompatibleMLLM(model, family=served_family(model), min_pixels=config.min_pixels,
                                    max_pixels=config.max_pixels, concurrency=config.batch_size)
    from tools.mllm.auto import load_local_mllm

    # Only the options a setting was given for: the other family's are then not warned about.
    family_options = {name: getattr(config, name) for name in ("min_pixels", "max_pixels", "max_patches")
                      if getattr(config, name) is not None}
    return load_local_mllm(
        config.mllm,
        device=config.device,
        dtype=config.dtype,
        adapter=config.adapter,
        batch_size=config.batch_size,
        **family_options,
    )


def served_family(model: str) -> str:
    """The box convention of a served ``model``, from its name ("OpenGVLab/InternVL2_5-8B" -> InternVL);
    Qwen2-VL's, the paper's, for a name that names no known family."""
    from tools.mllm.families import QWEN2_VL, family_for_model

    try:
        return family_for_model(model).name
    except UserInputError:
        return QWEN2_VL.name


def as_detections(value: Any, source: str) -> Detections:
    """``Detections`` from a backend's answer (``Detections`` or ``(boxes, scores)``); a box written
    with its corners inverted (``x2 < x1``) is reordered, as the bundled MLLMs' answers are."""
    if isinstance(value, Detections):
        detections = value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            boxes = np.asarray(value[0], dtype=float).reshape(-1, 4)
            scores = np.asarray(value[1], dtype=float).reshape(-1)
            detections = Detections(boxes, scores)
        except (TypeError, ValueError) as error:
            raise ModelOutputError(f"{source} returned malformed boxes or scores: {error}") from None
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ModelOutputError(f"{source} returned boxes or scores that are not finite numbers")
    else:
        raise ModelOutputError(f"{source} must return Detections or (boxes, scores), got {type(value).__name__}")
    boxes = detections.boxes
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        detections = replace(detections, boxes=box_ops.ordered_corners(boxes))
    return detections


def as_selection(value: Any, candidates: Detections, allow_none: bool) -> Selection:
    """``Selection`` from a backend's answer (``Selection`` or option probabilities)."""
    if isinstance(value, Selection):
        return value
    letters = option_letters(len(candidates), allow_none)
    expected = f"mllm.select must return a Selection or {len(letters)} option probabilities"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ModelOutputError(f"{expected}, got {type(value).__name__}")
    try:
        probabilities = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ModelOutputError(f"{expected}, got {value!r:.80}") from None
    if len(probabilities) != len(letters):
        raise ModelOutputError(f"{expected}, got {len(probabilities)}")
    total = probabilities.sum()
    if not np.isfinite(total) or total <= 0 or (probabilities < 0).any():
        raise ModelOutputError(f"mllm.select returned invalid probabilities {probabilities.tolist()}")
    return Selection(candidates, letters, probabilities / total, allow_none)
