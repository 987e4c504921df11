"""Remembering extracted targets per expression, in memory and optionally in a JSON file.

Long evaluation runs ask about tens of thousands of expressions; the file lets an
interrupted run resume without paying for the same LLM calls again. It is rewritten
atomically (temporary file + ``os.replace``), so a crash never leaves it half written.
One file belongs to one extractor configuration: answers from another model or prompt
are not told apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserInputError
from ..files import write_atomically
from .base import ExtractedTarget

FORMAT_VERSION = 1


class ExtractionCache:
    """``expression -> ExtractedTarget``; with ``path``, loaded from and saved to that JSON file."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._entries: dict[str, ExtractedTarget] = {}
        if self.path is not None and self.path.exists():
            self._entries = _load(self.path)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, expression: object) -> bool:
        return expression in self._entries

    def get(self, expression: str) -> ExtractedTarget | None:
        return self._entries.get(expression)

    def update(self, targets: dict[str, ExtractedTarget]) -> None:
        """Remember ``targets`` and, when backed by a file, save at once."""
        if not targets:
            return
        self._entries.update(targets)
        if self.path is not None:
            self.save()

    def save(self) -> None:
        """Write every entry to ``path`` atomically, keeping entries other processes saved
        there since (shards and concurrent runs may share one cache file)."""
        if self.path is None:
            raise ValueError("this cache has no file to save to")
        if self.path.exists():
            self._entries = {**_load(self.path), **self._entries}
        payload = {
            "version": FORMAT_VERSION,
            "entries": {expression: target.to_dict() for expression, target in self._entries.items()},
        }
        write_atomically(self.path, json.dumps(payload, ensure_ascii=False, indent=0))

    def __repr__(self) -> str:
        return f"ExtractionCache({len(self)} entries, path={str(self.path) if self.path else None!r})"


def _load(path: Path) -> dict[str, ExtractedTarget]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {payload.get('version')!r}, expected {FORMAT_VERSION}")
        return {expression: ExtractedTarget.from_dict(entry) for expression, entry in payload["entries"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserInputError(f"{path}: not a target-extraction cache ({error})") from None
