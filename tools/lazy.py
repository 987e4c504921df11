"""Packages whose public names are imported on first use (PEP 562).

``from tools import Detections`` keeps working, but importing ``tools.errors`` (or running
``agent-cli --help``) no longer pays for torch, transformers and langgraph.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public name to the
    submodule defining it (relative, e.g. ``".detections"``); a name equal to its submodule's
    own name (``"boxes": ".boxes"``) is the submodule itself."""

    def __getattr__(name: str) -> Any:
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(source, package)
        return module if source.lstrip(".") == name else getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
