"""``Agent``: the Python entry point, ``Agent().locate(image, expression)``."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any, Sequence

from PIL import Image

from tools.batching import chunks, run_together
from tools.errors import UserInputError
from tools.extraction.base import ExtractedTarget
from tools.images import ImageInput, exif_orientation, load_image
from tools.text import clean_expression

from .backends import Backends
from .configuration import MODEL_SETTINGS, Configuration
from .context import Context
from .finishing import FinishPolicy, recorded_answer
from .graph import build_graph
from .result import FROM_STATE, Result


class Agent:
    """Locates what referring expressions point at, with the strategy of ``config``.

    Settings come from ``Configuration.load`` (defaults, config file, ``REX_*``
    environment) overridden by keyword arguments, e.g.
    ``Agent(strategy="crs", allow_none=True)``. ``detector=`` and ``mllm=`` take a
    checkpoint (Hub id or folder; ``mllm="openai:MODEL"`` for a server) or a plug-in
    object; ``extractor=`` takes an ``llm`` setting ("heuristic", "openai:MODEL", ...)
    or a plug-in. Models are loaded on first use, once, and only if the strategy
    needs them.
    """

    def __init__(
        self,
        strategy: str | None = None,
        focus: bool | None = None,
        *,
        detector: Any = None,
        mllm: Any = None,
        extractor: Any = None,
        config: Configuration | None = None,
        config_file: str | None = None,
        **settings: Any,
    ) -> None:
        # Strings name checkpoints (settings); other objects are plug-in backends.
        if isinstance(detector, (str, os.PathLike)):
            settings["detector"], detector = os.fspath(detector), None
        if isinstance(mllm, (str, os.PathLike)):
            settings["mllm"], mllm = os.fspath(mllm), None
        if isinstance(extractor, str):
            settings["llm"], extractor = extractor, None
        base = config or Configuration.load(config_file)
        given = dict(strategy=strategy, focus=focus, **settings)
        overrides = {key: value for key, value in given.items() if value is not None}
        config = base.updated(**overrides) if overrides else base
        self._bind(config, Backends(config, detector=detector, mllm=mllm, extractor=extractor))

    def _bind(self, config: Configuration, backends: Backends) -> None:
        self.config, self.backends = config, backends
        self.graph = build_graph(config)
        self._policy = FinishPolicy.of(config)

    def with_settings(self, **settings: Any) -> "Agent":
        """An agent with other method settings (``strategy``, ``focus``, ``allow_none``,
        thresholds, ...) that shares this agent's models, loaded or not: what either loads,
        both use. The settings that choose or place a model (``MODEL_SETTINGS``) stay."""
        changed = sorted(
            name for name in MODEL_SETTINGS if name in settings and settings[name] != getattr(self.config, name)
        )
        if changed:
            raise UserInputError(f"with_settings cannot change {', '.join(changed)}: they choose the models")
        config = self.config.updated(**settings)
        variant = type(self).__new__(type(self))
        variant._bind(config, self.backends.with_config(config))
        return variant

    def check_checkpoints(self) -> None:
        """Raise ``CheckpointNotFoundError`` for a checkpoint the strategy needs that cannot be had,
        before any model loads (``load_models`` and the CLI call it first)."""
        self.backends.check_checkpoints()

    def load_models(self) -> None:
        """Load every model the strategy needs now (they otherwise load on first use), so a
        missing checkpoint or bad setting shows before the first query."""
        self.check_checkpoints()
        needed = {"detector": self.config.uses_detector, "mllm": self.config.uses_mllm,
                  "extractor": self.config.uses_extractor}
        for backend in (name for name, used in needed.items() if used):
            getattr(self.backends, backend)

    def locate(self, image: ImageInput, expression: str, *, target: ExtractedTarget | str | None = None) -> Result:
        """Find what ``expression`` refers to in ``image`` (a path, encoded file bytes, PIL image or uint8 array).

        ``target``: the target phrase when it is known (a phrase of the expression, or an
        ``ExtractedTarget``); the extractor is then not asked.
        """
        expression = clean_expression(expression)
        if isinstance(target, str):  # cleaned as the expression is, so that it is found in it
            target = clean_expression(target, "target")
        elif isinstance(target, ExtractedTarget):
            target = target.within(expression)
        start = time.perf_counter()
        limit = self.config.max_image_pixels
        picture = load_image(image, max_pixels=limit)
        inputs: dict[str, Any] = {"image": picture, "expression": expression}
        if target is not None:
            inputs["given_target"] = target
        if self.config.uses_mllm and not self.config.profile_rules.mllm_exif_orientation and exif_orientation(image) != 1:
            inputs["mllm_image"] = load_image(image, max_pixels=limit, orientation=False)
        decode_time = time.perf_counter() - start
        context = Context(self.config, self.backends.detector_adapter.for_query(), self.backends.mllm_adapter,
                          self.backends.extractor_adapter, self._policy)
        state = self.graph.invoke(inputs, context=context)
        carried = {name: state[name] for name in FROM_STATE if state.get(name) is not None}
        if "verification" in carried:
            carried["verification"] = [float(p) for p in carried["verification"]]
        return Result(
            image_size=picture.size,
            strategy=self.config.strategy,
            path_answer=recorded_answer(state.get("path"), state["answer"], self._policy) if "answer" in state else None,
            timings={"load_image": decode_time, **state["timings"], "total": time.perf_counter() - start},
            **carried,
        )

    def locate_batch(
        self, images: Sequence[ImageInput], expressions: Sequence[str], *, return_exceptions: bool = False
    ) -> list[Result]:
        """``locate`` for many queries, ``batch_size`` of them together: the models are loaded once,
        and the MLLM (and a detector with ``detect_batch``) answers the queries of a batch in one
        batched call each (``tools.batching``). Every query keeps its own graph run, so its trace,
        timings and fallbacks are its own; results equal one-at-a-time ones.

        Targets are extracted for all expressions first, in batches; an image file named by
        several queries in a row (datasets list several expressions per image) is decoded
        once: the last few decoded files are kept. A query that fails raises its exception,
        or, with ``return_exceptions``, has it in its place of the list.
        """
        if len(images) != len(expressions):
            raise ValueError(f"{len(images)} images but {len(expressions)} expressions")
        self.prefetch_targets(expressions)
        batch = self.config.batch_size
        if batch > 1 and len(images) > 1:
            self.load_models()  # once, before the queries' threads need them
        recent: OrderedDict[str, Image.Image] = OrderedDict()
        limit = self.config.max_image_pixels
        results: list = []
        for together in chunks(zip(images, expressions), batch):
            # Images are decoded here, in order, so the recent-file memory needs no lock.
            queries = [(_decode_once_or_error(image, recent, limit), text) for image, text in together]
            results += run_together(self._locate_query, queries, batch)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    def _locate_query(self, query: tuple) -> Result:
        image, expression = query
        if isinstance(image, BaseException):
            raise image
        return self.locate(image, expression)

    def prefetch_targets(self, expressions: Sequence[str]) -> None:
        """Extract the targets of many expressions at once (a model extractor batches them, 8 per
        prompt by default, and caches the answers that ``locate`` then reuses). Blank
        expressions are skipped here; ``locate`` reports them."""
        cleaned = []
        for expression in expressions:
            try:
                cleaned.append(clean_expression(expression))
            except UserInputError:
                continue
        if self.config.uses_extractor:
            self.backends.extractor_adapter.prefetch(cleaned)

    def __repr__(self) -> str:
        return f"Agent(strategy={self.config.strategy!r}, focus={self.config.focus})"


def _decode_once_or_error(source: ImageInput, recent: "OrderedDict[str, Image.Image]", max_pixels: int):
    """``_decode_once``, or the error its query will raise."""
    try:
        return _decode_once(source, recent, max_pixels)
    except Exception as error:  # noqa: BLE001 - raised again by that query alone
        return error


def _decode_once(source: ImageInput, recent: "OrderedDict[str, Image.Image]", max_pixels: int, keep: int = 8):
    """Decode an image file at most once while it stays among the ``keep`` most recent ones."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    key = os.fspath(source)
    if key in recent:
        recent.move_to_end(key)
    else:
        recent[key] = load_image(source, max_pixels=max_pixels)
        if len(recent) > keep:
            recent.popitem(last=False)
    return recent[key]
