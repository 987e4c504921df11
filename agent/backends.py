"""The models one agent uses: loaded lazily from settings, or plugged in by the user, and the
adapters the graph's nodes call them through (``agent.adapters``).

Plug-ins follow their kind's Protocols (``tools.detectors.base.Detector`` and ``DetectorExtras``,
``tools.mllm.base.MLLM`` and ``MLLMExtras``, ``tools.extraction.base.TargetExtractor`` and
``ExtractorExtras``), checked when they are plugged in, and may return plain Python values:
``detect``/``ground`` -> ``Detections`` or a ``(boxes, scores)`` pair of lists; ``select`` ->
``Selection`` or option probabilities (candidates in order, "None" last when allowed);
``extract`` -> one phrase (or ``None``) per expression. Queries run together
(``tools.batching``) have their calls coalesced into the optional ``_batch`` methods; a model
without them is called once per query. Calls into a plug-in take turns unless it says
``thread_safe = True`` (the bundled models serialise themselves).
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

from tools.defaults import OPENAI_PREFIX
from tools.errors import UserInputError
from tools.extraction import HeuristicExtractor, LocalChatExtractor, OpenAIChatExtractor
from tools.extraction.reference import ReferenceExtractor
from tools.mllm.openai_compat import OpenAICompatibleMLLM

from .adapters import DetectorAdapter, ExtractorAdapter, MLLMAdapter, Turns, check_plugins
from .configuration import Configuration

# What every PEFT adapter folder holds.
ADAPTER_CONFIG = "adapter_config.json"


class Backends:
    """Detector, MLLM and target extractor of one agent, each loaded on first use and kept, and
    their adapters (``detector_adapter``, ...), through which every call goes.

    ``with_config`` gives the backends of other method settings (strategy, focus, ...)
    over the same model slots: a model either of them loads serves both.
    """

    def __init__(self, config: Configuration, *, detector=None, mllm=None, extractor=None) -> None:
        given = {"detector": detector, "mllm": mllm, "extractor": extractor}
        # Slot name -> model. A plug-in extractor fills "extractor"; loaded ones are kept per
        # resolved ``llm`` choice ("extractor:mllm", ...), since "auto" depends on the strategy.
        self._bind(config, {name: model for name, model in given.items() if model is not None},
                   threading.RLock(), Turns())

    def _bind(self, config: Configuration, models: dict[str, Any], loading: threading.RLock, turns: Turns) -> None:
        check_plugins({kind: models.get(kind) for kind in ("detector", "mllm", "extractor")}, config)
        self.config = config
        self._models, self._loading = models, loading  # one thread loads a model; the others wait for it
        rules = config.profile_rules
        self.detector_adapter = DetectorAdapter(lambda: self.detector, turns, config.batch_size,
                                                rules.detector_resize)
        self.mllm_adapter = MLLMAdapter(lambda: self.mllm, turns, config.batch_size, rules.crs_reading)
        self.extractor_adapter = ExtractorAdapter(lambda: self.extractor, turns, rules.target_span)
        self._turns = turns

    def with_config(self, config: Configuration) -> "Backends":
        """Backends for ``config`` sharing these ones' models; ``config`` must name the same models."""
        shared = Backends.__new__(Backends)
        shared._bind(config, self._models, self._loading, self._turns)
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
        variant = " reference" if config.profile_rules.extraction == "reference" else ""
        variant += " +count" if config.needs_count and not variant else ""
        temperature = config.extraction_temperature
        return variant + ("" if temperature == 0 else f" temperature={'default' if temperature is None else temperature}")

    def _load_extractor(self, choice: str):
        if choice == "heuristic":
            return HeuristicExtractor()
        if self.config.profile_rules.extraction == "reference":
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

def _unknown_llm(choice: str) -> UserInputError:
    return UserInputError(f"unknown llm {choice!r}; use auto, mllm, heuristic or openai:MODEL")


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
