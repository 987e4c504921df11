"""Every setting of the agent, with its default, in one place.

Precedence, lowest first: the defaults below, a config file (TOML or JSON; the
``REX_CONFIG`` environment variable or ``config_file=`` names it), ``REX_*``
environment variables (e.g. ``REX_STRATEGY=crs``, ``REX_ALLOW_NONE=1``), then
explicit arguments.

(Just over 400 lines: every setting is declared here, with its checks and its readers, so that
one reading shows what the agent can be told.)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from tools.defaults import (BATCH_SIZE, CRS_CANDIDATES, DEFAULT_DETECTOR, DEFAULT_MLLM, OPENAI_PREFIX, OPTION_LETTERS,
                            ROUTING, BoxFilter)
from tools.devices import check_device_name, check_dtype_name
from tools.errors import UserInputError
from tools.images import DEFAULT_MAX_IMAGE_PIXELS, check_pixel_budget
from tools.profiles import PROFILES, Profile, get_profile

STRATEGIES = ("specialist", "mllm", "sfa", "crs", "sfa+crs")
CRS_MODES = ("choice", "verify")
COUNT_MODES = ("text", "image", "both")
AUTO = "auto"  # multi: as many targets as the expression names
ENV_PREFIX = "REX_"
# The settings that choose, place or feed a model when it loads. Agents sharing models
# (``Agent.with_settings``) agree on these and may differ in every other one.
MODEL_SETTINGS = (
    "detector", "mllm", "llm", "adapter", "device", "dtype", "detector_dtype", "min_pixels", "max_pixels", "max_patches",
    "cache_dir",
)


# How ``agent-cli --help`` groups the settings' flags, in this order.
GROUPS = ("Method", "Models", "Execution", "Routing (SFA)", "CRS", "Generalized REC")


def setting(default: Any, group: str, help: str) -> Any:
    """A field of ``Configuration``: its default, the flag group and the one help text that
    ``--help``, the README's settings table and the error messages share."""
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    return field(default=default, metadata={"group": group, "help": help})


@dataclass(frozen=True)
class Configuration:
    """Settings of one agent: each field is a flag of ``agent-cli locate``, ``eval`` and ``serve``
    (``--router-top-k`` for ``router_top_k``), a ``REX_*`` variable and a config-file key."""

    profile: str = setting("default", "Method", "default, or reference: the authors' released scripts (README, Profiles)")
    strategy: str = setting("sfa", "Method", "specialist, mllm, sfa, crs or sfa+crs")
    focus: bool = setting(True, "Method", "target-focus matching (detector) and prompt (MLLM)")
    allow_none: bool = setting(False, "Method", "a query may have no target")
    multi: str | bool = setting(
        False, "Method",
        "how many targets a query may have: false (one), true (several), auto (as many as the expression "
        "says: 'both', 'two', plurals, coordinations)",
    )
    detector: str = setting(
        DEFAULT_DETECTOR, "Models",
        "Grounding DINO, MM-GDINO, OWLv2 or Florence-2 Hub id or folder (the checkpoint's config says which)",
    )
    mllm: str = setting(
        DEFAULT_MLLM, "Models",
        "Qwen2-VL / Qwen2.5-VL / Qwen3-VL / InternVL (-hf) Hub id or folder, or openai:MODEL for an "
        "OpenAI-compatible server",
    )
    llm: str = setting(
        "auto", "Models",
        "target extraction: auto (the MLLM text-only when the strategy loads one, else heuristic), mllm, "
        "heuristic, openai:MODEL",
    )
    llm_temperature: str | float | None = setting(
        None, "Models",
        "target extraction's temperature on a served LLM: unset = the profile's (0; reference: the API's "
        "default), default (not sent) or a number in [0, 2]",
    )
    adapter: str | None = setting(
        None, "Models",
        "PEFT LoRA adapter folder loaded onto the MLLM (kept unmerged: target extraction runs with it "
        "switched off, since it was tuned for CRS)",
    )
    device: str = setting("auto", "Models", "auto (CUDA when present), cpu, cuda or cuda:N")
    dtype: str = setting(
        "auto", "Models",
        "the MLLM's weights: auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16; Qwen2-VL in fp16 is "
        "warned about (it overflows)",
    )
    # Detection heads lose recall in half precision, and the detector is cheap next to the MLLM.
    detector_dtype: str = setting(
        "auto", "Models", "the detector's weights: auto keeps fp32 everywhere, or fp16, bf16"
    )
    min_pixels: int | None = setting(
        None, "Models", "Qwen VL: smallest pixel budget of the MLLM's image (default: the checkpoint's)"
    )
    max_pixels: int | None = setting(
        None, "Models", "Qwen VL: largest pixel budget of the MLLM's image (default: the checkpoint's)"
    )
    max_patches: int | None = setting(
        None, "Models", "InternVL: most tiles an image is cut into (default 6, as InternVL's own RefCOCO evaluation)"
    )
    # Decompression bombs are refused before they are decoded.
    max_image_pixels: int = setting(
        DEFAULT_MAX_IMAGE_PIXELS, "Models", "image files with more pixels are refused before decoding"
    )
    cache_dir: str | None = setting(
        None, "Models",
        "folder keeping detector answers and extracted targets across runs, so strategies compared on "
        "the same data do not recompute them",
    )
    batch_size: int = setting(
        BATCH_SIZE, "Execution",
        "queries run together by locate_batch, eval and each serve worker: their MLLM calls share one "
        "batched call (1: one query at a time)",
    )
    router_top_k: int = setting(ROUTING.top_k, "Routing (SFA)", "boxes of the target phrase considered")
    router_score_threshold: float = setting(ROUTING.score_threshold, "Routing (SFA)", "minimum score of an instance")
    router_iou_threshold: float = setting(ROUTING.iou_threshold, "Routing (SFA)", "NMS IoU merging duplicates")
    crs_top_k: int = setting(CRS_CANDIDATES.top_k, "CRS", "candidates offered (before NMS)")
    crs_iou_threshold: float = setting(CRS_CANDIDATES.iou_threshold, "CRS", "NMS IoU over the candidates")
    crs_mode: str = setting(
        "choice", "CRS",
        "choice: the MLLM picks one lettered option (the paper's); verify: it answers yes/no for each candidate",
    )
    crs_permutations: int = setting(
        1, "CRS", "choice: ask with the options in this many cyclic orders and average (debiases letter preference)"
    )
    specialist_threshold: float = setting(
        0.3, "Generalized REC", "with allow_none: specialist answers scoring less are no target"
    )
    mllm_threshold: float = setting(
        0.5, "Generalized REC", "with allow_none: MLLM boxes less confident are no target"
    )
    multi_ratio: float = setting(
        0.5, "Generalized REC", "multi with CRS: share of the best option's probability to keep a candidate"
    )
    verify_threshold: float = setting(
        0.5, "Generalized REC", "crs_mode verify: candidates with p(yes) below it are not the target"
    )
    count_mode: str = setting(
        "text", "Generalized REC",
        "multi auto: how many targets, read from the text (the extraction LLM or the words), the image (the "
        "MLLM counts 0-5 or more over the candidates) or both (the image's, a number the text states winning)",
    )
    count_zero_threshold: float | None = setting(
        None, "Generalized REC",
        "count_mode image/both: no target when the MLLM's p(0) reaches it (unset: when 0 is its likeliest count)",
    )

    def __post_init__(self) -> None:
        for item in fields(self):  # the Python API gets the file's and environment's type checks too
            _check_type(item.name, item.type, getattr(self, item.name))
        get_profile(self.profile)
        check_dtype_name(self.dtype)
        check_dtype_name(self.detector_dtype)
        check_device_name(self.device)
        if self.max_image_pixels < 1:
            raise UserInputError(f"max_image_pixels must be at least 1, got {self.max_image_pixels}")
        check_pixel_budget(self.min_pixels, self.max_pixels, self.max_patches)
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise UserInputError(f"cache_dir {self.cache_dir!r} is a file, not a folder")
        for name in ("mllm", "llm"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith(OPENAI_PREFIX) and not value[len(OPENAI_PREFIX):].strip():
                raise UserInputError(f"{name}={value!r} names no model: give openai:MODEL")
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.crs_top_k < 1 or self.router_top_k < 1 or self.batch_size < 1:
            raise UserInputError("crs_top_k, router_top_k and batch_size must be at least 1")
        if self.crs_top_k + self.allow_none > len(OPTION_LETTERS):
            raise UserInputError(f"CRS offers at most {len(OPTION_LETTERS)} options: crs_top_k={self.crs_top_k} is too many")
        object.__setattr__(self, "multi", multi_mode(self.multi))
        if self.crs_mode not in CRS_MODES:
            raise UserInputError(f"unknown crs_mode {self.crs_mode!r}; choose one of {', '.join(CRS_MODES)}")
        if self.crs_permutations < 1:
            raise UserInputError(f"crs_permutations must be at least 1, got {self.crs_permutations}")
        if self.crs_permutations > 1 and self.profile_rules.crs_reading == "generated":
            raise UserInputError(f"crs_permutations averages letter probabilities; the {self.profile} profile reads "
                                 "the generated answer (use crs_permutations=1)")
        object.__setattr__(self, "llm_temperature", _temperature_setting(self.llm_temperature))
        for name in ("router_score_threshold", "router_iou_threshold", "crs_iou_threshold",
                     "specialist_threshold", "mllm_threshold", "multi_ratio", "verify_threshold",
                     "count_zero_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserInputError(f"{name} must lie in [0, 1], got {value}")
        if self.count_mode not in COUNT_MODES:
            raise UserInputError(f"unknown count_mode {self.count_mode!r}; choose one of {', '.join(COUNT_MODES)}")

    @property
    def profile_rules(self) -> Profile:
        """The ``Profile`` the ``profile`` setting names: what it decides (NMS method, CRS focus,
        fallbacks, ...)."""
        return PROFILES[self.profile]

    @property
    def extraction_temperature(self) -> float | None:
        """The temperature sent with a served extraction request; ``None``: none sent."""
        if self.llm_temperature is None:
            return self.profile_rules.extraction_temperature
        return None if self.llm_temperature == DEFAULT_TEMPERATURE else float(self.llm_temperature)

    @property
    def routing(self) -> BoxFilter:
        return BoxFilter(self.router_top_k, self.router_score_threshold, self.router_iou_threshold,
                         self.profile_rules.nms)

    @property
    def crs_rule(self) -> BoxFilter:
        return BoxFilter.crs(self.crs_top_k, self.crs_iou_threshold, self.profile_rules.nms)

    @property
    def crs_focus(self) -> bool:
        """Whether CRS detects the expression with target focus."""
        return self.focus and self.profile_rules.crs_focus

    @property
    def uses_detector(self) -> bool:
        return self.strategy != "mllm"

    @property
    def uses_mllm(self) -> bool:
        return self.strategy != "specialist" or self.counts_from_image

    @property
    def counts_from_image(self) -> bool:
        """Whether the MLLM counts the targets over the candidates (``multi="auto"``, ``count_mode`` image or both)."""
        return self.multi == AUTO and self.count_mode != "text"

    @property
    def needs_count(self) -> bool:
        """Whether answers depend on how many objects the expression names (``multi="auto"``, verification)."""
        return self.multi == AUTO or (self.crs_mode == "verify" and self.strategy in ("crs", "sfa+crs"))

    @property
    def uses_extractor(self) -> bool:
        """Routing needs the target phrase; so does focus, on every path that applies it, and the
        expected count."""
        if self.strategy in ("sfa", "sfa+crs") or self.needs_count:
            return True
        return self.crs_focus if self.strategy == "crs" else self.focus

    def updated(self, **settings: Any) -> "Configuration":
        """These settings with ``settings`` changed, checked and coerced like ``load``'s (no file, no environment)."""
        return Configuration.load(env={}, **{**self.to_dict(), **settings})

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> "Configuration":
        """Defaults < config file < ``REX_*`` environment < ``overrides`` (``None`` values are ignored).

        ``defaults`` replace the fields' own defaults, e.g. a server's smaller image limit.
        """
        env = os.environ if env is None else env
        settings: dict[str, Any] = dict(defaults or {})
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
        if config_file:
            settings.update(read_config_file(config_file))
        for item in fields(cls):
            raw = env.get(ENV_PREFIX + item.name.upper())
            if raw is not None:
                settings[item.name] = _parse_env(item.name, raw)
        settings.update({key: value for key, value in overrides.items() if value is not None})
        unknown = set(settings) - {item.name for item in fields(cls)}
        if unknown:
            raise UserInputError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(cls(), **{key: _coerce(key, value) for key, value in settings.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_TEMPERATURE = "default"  # llm_temperature: send none, the API's default applies


def _temperature_setting(value: Any) -> str | None:
    """``llm_temperature`` as ``None``, "default" or a number's text in [0, 2]."""
    if value is None or (isinstance(value, str) and value.strip().lower() == DEFAULT_TEMPERATURE):
        return None if value is None else DEFAULT_TEMPERATURE
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0.0 <= number <= 2.0:
        raise UserInputError(f"llm_temperature={value!r}: choose default or a number in [0, 2]")
    return repr(number)


def multi_mode(value: Any) -> bool | str:
    """``multi`` as ``False``, ``True`` or ``"auto"``, from a bool or its spellings ("true", "off", "auto", ...)."""
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() == AUTO:
        return AUTO
    word = boolean_word(str(value))
    if word is None:
        raise UserInputError(f"multi={value!r}: choose false, true or auto")
    return word


def _check_type(name: str, kind: str, value: Any) -> None:
    """``UserInputError`` for a setting whose value is not of its declared ``kind`` (a bool is no number)."""
    if value is None and "None" in kind:
        return
    wanted = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    allowed = tuple(t for part in kind.split("|") for t in wanted.get(part.strip(), ()))
    number = kind.startswith(("int", "float"))
    if allowed and (not isinstance(value, allowed) or (number and isinstance(value, bool))):
        raise UserInputError(f"setting {name}={value!r:.60} must be {kind.replace(' | None', '')}")


def boolean_word(text: str) -> bool | None:
    """The truth value a setting's text spells (1/0, true/false, yes/no, on/off), else ``None``."""
    lowered = text.strip().lower()
    return True if lowered in ("1", "true", "yes", "on") else False if lowered in ("0", "false", "no", "off") else None


def settings_table() -> str:
    """The README's settings table (Markdown), written from the fields' defaults and help."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for group in GROUPS:
        rows.append(f"| **{group}** | | |")
        for item in fields(Configuration):
            if item.metadata["group"] == group:
                rows.append(f"| `{item.name}` | {_shown_default(item.default)} | {item.metadata['help']} |")
    return "\n".join(rows)


def _shown_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a TOML (``[agent]`` table or top level) or JSON file."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"config file {file}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"config file {file}: not UTF-8 text") from None
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as error:
        raise UserInputError(f"config file {file}: {error}") from None
    except RecursionError:
        raise UserInputError(f"config file {file}: nested too deeply") from None
    if isinstance(data, dict):
        data = data.get("agent", data)
    if not isinstance(data, dict):
        raise UserInputError(f"config file {file}: expected a table of settings")
    return {key.replace("-", "_"): value for key, value in data.items()}


_FIELD_TYPES = {item.name: item.type for item in fields(Configuration)}


def _parse_env(name: str, raw: str) -> Any:
    if _FIELD_TYPES[name].startswith("bool"):
        word = boolean_word(raw)
        if word is None:
            raise UserInputError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean")
        return word
    return raw


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
    if value is None and "None" in kind:
        return None
    if kind.startswith("str") and "float" not in kind and "bool" not in kind and not isinstance(value, str):
        raise UserInputError(f"setting {name}={value!r:.60} must be text")
    if isinstance(value, bool) and kind.startswith(("int", "float")):  # True is an int to Python, not to a user
        raise UserInputError(f"setting {name}={value!r} must be a number")
    try:
        if kind.startswith("bool") and isinstance(value, str):
            return _parse_env(name, value)
        if kind.startswith("int") and value is not None:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"setting {name}={value!r} is not a valid {kind}") from None
    return value
