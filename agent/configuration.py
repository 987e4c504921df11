"""Every setting of the agent, with its default, in one place.

Precedence, lowest first: the defaults below, a config file (TOML or JSON; the
``REX_CONFIG`` environment variable or ``config_file=`` names it), ``REX_*``
environment variables (e.g. ``REX_STRATEGY=crs``, ``REX_ALLOW_NONE=1``), then
explicit arguments.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from tools.detectors.grounding_dino import DEFAULT_DETECTOR
from tools.devices import check_device_name, check_dtype_name
from tools.errors import UserInputError
from tools.images import DEFAULT_MAX_IMAGE_PIXELS
from tools.mllm.crs import LETTERS
from tools.mllm.qwen import DEFAULT_CHECKPOINT as DEFAULT_MLLM
from tools.profiles import PROFILES, Profile, get_profile
from tools.routing import CRS_CANDIDATES, ROUTING, RoutingThresholds

STRATEGIES = ("specialist", "mllm", "sfa", "crs", "sfa+crs")
ENV_PREFIX = "REX_"
# The settings that choose, place or feed a model when it loads. Agents sharing models
# (``Agent.with_settings``) agree on these and may differ in every other one.
MODEL_SETTINGS = (
    "detector", "mllm", "llm", "adapter", "device", "dtype", "detector_dtype", "min_pixels", "max_pixels", "cache_dir"
)


@dataclass(frozen=True)
class Configuration:
    """Settings of one agent. See the README's "Settings" table for each one."""

    # Method. "reference" reproduces the authors' released scripts (tools/profiles.py).
    profile: str = "default"
    strategy: str = "sfa"
    focus: bool = True
    allow_none: bool = False
    multi: bool = False
    # Models (Hub ids or local paths) and where they run
    detector: str = DEFAULT_DETECTOR
    mllm: str = DEFAULT_MLLM
    llm: str = "auto"
    adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # The detector's weights: "auto" keeps float32 everywhere (detection heads lose recall in
    # half precision, and the detector is cheap next to the MLLM); fp16/bf16 on request.
    detector_dtype: str = "auto"
    min_pixels: int | None = None
    max_pixels: int | None = None
    # Image files with more pixels are refused before decoding (decompression bombs).
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # A folder keeping detector answers and extracted targets across runs, so strategies
    # compared on the same data do not recompute them (none: nothing is kept).
    cache_dir: str | None = None
    # SFA routing and CRS candidates (the paper's values, declared in tools/routing.py)
    router_top_k: int = ROUTING.top_k
    router_score_threshold: float = ROUTING.score_threshold
    router_iou_threshold: float = ROUTING.iou_threshold
    crs_top_k: int = CRS_CANDIDATES.top_k
    crs_iou_threshold: float = CRS_CANDIDATES.iou_threshold
    # Generalized REC: answers below these confidences count as "no target" when
    # allow_none is on, and several boxes above them are kept when multi is on.
    specialist_threshold: float = 0.3
    mllm_threshold: float = 0.5
    # With multi, CRS keeps every candidate whose probability is at least this share
    # of the best option's.
    multi_ratio: float = 0.5

    def __post_init__(self) -> None:
        get_profile(self.profile)
        check_dtype_name(self.dtype)
        check_dtype_name(self.detector_dtype)
        check_device_name(self.device)
        if self.max_image_pixels < 1:
            raise UserInputError(f"max_image_pixels must be at least 1, got {self.max_image_pixels}")
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise UserInputError(f"cache_dir {self.cache_dir!r} is a file, not a folder")
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.crs_top_k < 1 or self.router_top_k < 1:
            raise UserInputError("crs_top_k and router_top_k must be at least 1")
        if self.crs_top_k + self.allow_none > len(LETTERS):
            raise UserInputError(f"CRS offers at most {len(LETTERS)} options: crs_top_k={self.crs_top_k} is too many")
        for name in ("router_score_threshold", "router_iou_threshold", "crs_iou_threshold",
                     "specialist_threshold", "mllm_threshold", "multi_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserInputError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def behaviour(self) -> Profile:
        """What ``profile`` decides (NMS method, CRS focus, fallbacks, ...)."""
        return PROFILES[self.profile]

    @property
    def routing(self) -> RoutingThresholds:
        return RoutingThresholds(self.router_top_k, self.router_score_threshold, self.router_iou_threshold,
                                 self.behaviour.nms)

    @property
    def crs_rule(self) -> RoutingThresholds:
        return RoutingThresholds(self.crs_top_k, CRS_CANDIDATES.score_threshold, self.crs_iou_threshold,
                                 self.behaviour.nms)

    @property
    def crs_focus(self) -> bool:
        """Whether CRS detects the expression with target focus."""
        return self.focus and self.behaviour.crs_focus

    @property
    def uses_detector(self) -> bool:
        return self.strategy != "mllm"

    @property
    def uses_mllm(self) -> bool:
        return self.strategy != "specialist"

    @property
    def uses_extractor(self) -> bool:
        """Routing needs the target phrase; so does focus, on every path that applies it."""
        if self.strategy in ("sfa", "sfa+crs"):
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
        **overrides: Any,
    ) -> "Configuration":
        """Defaults < config file < ``REX_*`` environment < ``overrides`` (``None`` values are ignored)."""
        env = os.environ if env is None else env
        settings: dict[str, Any] = {}
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
        if config_file:
            settings.update(read_config_file(config_file))
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                settings[field.name] = _parse_env(field.name, raw)
        settings.update({key: value for key, value in overrides.items() if value is not None})
        unknown = set(settings) - {field.name for field in fields(cls)}
        if unknown:
            raise UserInputError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(cls(), **{key: _coerce(key, value) for key, value in settings.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a TOML (``[agent]`` table or top level) or JSON file."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"config file {file}: no such file")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as error:
        raise UserInputError(f"config file {file}: {error}") from None
    if isinstance(data, dict):
        data = data.get("agent", data)
    if not isinstance(data, dict):
        raise UserInputError(f"config file {file}: expected a table of settings")
    return {key.replace("-", "_"): value for key, value in data.items()}


_FIELD_TYPES = {field.name: field.type for field in fields(Configuration)}


def _parse_env(name: str, raw: str) -> Any:
    if "bool" in _FIELD_TYPES[name]:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserInputError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean")
    return raw


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
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
