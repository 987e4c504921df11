"""Checked access to the JSON records of annotation files.

Every problem is a :class:`~tools.errors.UserInputError` that names the file, the
record (``images[3] (id 17)``) and the field, so a bad download or a hand-edited file
is fixed in one look instead of by reading a ``KeyError`` traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserInputError
from ..numbers import is_finite_number

_MISSING = object()


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, unreadable or invalid file is a ``UserInputError``."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory, expected a JSON annotation file")
    if path.exists() and not path.is_file():  # a device or pipe (/dev/zero) never ends
        raise UserInputError(f"{path}: not a regular file, expected a JSON annotation file")
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise UserInputError(f"{path}: not valid JSON ({error.msg} at {where})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: cannot be read ({error})") from None
    except RecursionError:
        raise UserInputError(f"{path}: nested too deeply to be an annotation file") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise UserInputError(f"{path}: not valid JSON ({error})") from None


def records(container: Any, name: str, path: Path, id_field: str = "id") -> Iterator["Record"]:
    """The records of the list ``container[name]``, each knowing where it came from."""
    if not isinstance(container, dict):
        raise UserInputError(f"{path}: expected a JSON object with {name!r}, got {type(container).__name__}")
    items = container.get(name, _MISSING)
    if items is _MISSING:
        raise UserInputError(f"{path}: missing top-level field {name!r}")
    if not isinstance(items, list):
        raise UserInputError(f"{path}: top-level field {name!r} must be a list, got {type(items).__name__}")
    for index, item in enumerate(items):
        yield Record(item, path, f"{name}[{index}]", id_field)


class Record:
    """One JSON object of an annotation file, with typed, located field access."""

    def __init__(self, data: Any, path: Path, position: str, id_field: str = "id") -> None:
        self.path = path
        self.data = data
        known = isinstance(data, dict) and id_field in data
        self.label = f"{position} ({id_field.replace('_', ' ')} {data[id_field]!r})" if known else position
        self.where = f"{path}: {self.label}"
        if not isinstance(data, dict):
            raise UserInputError(f"{self.where}: expected a JSON object, got {type(data).__name__}")

    def error(self, name: str, problem: str) -> UserInputError:
        return UserInputError(f"{self.where}: field {name!r} {problem}")

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str, *, required: bool = True) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise self.error(name, "is missing")
        return value

    def identifier(self, name: str = "id") -> int | str:
        """An id: an integer or a non-empty string."""
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise self.error(name, f"must be an integer or a non-empty string, got {value!r:.60}")
        return value

    def text(self, name: str) -> str:
        value = self.raw(name)
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"must be a non-empty string, got {value!r:.60}")
        return value

    def integer(self, name: str, *, required: bool = True, allowed: tuple[int, ...] | None = None) -> int | None:
        value = self.raw(name, required=required)
        if value is None:
            return None
        # Levels are sometimes written as strings ("2") or floats (2.0); both mean the integer.
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):  # ASCII digits: "²" is no level
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {value!r:.60}")
        if allowed is not None and value not in allowed:
            raise self.error(name, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value

    def size(self) -> tuple[int, int] | None:
        """``(width, height)`` when both are present; a present but non-positive value is an error."""
        if not (self.has("width") and self.has("height")):
            return None
        width, height = self.integer("width"), self.integer("height")
        for name, value in (("width", width), ("height", height)):
            if value <= 0:
                raise self.error(name, f"must be positive, got {value}")
        return width, height

    def xywh(self, name: str = "bbox") -> list[float]:
        """A COCO box ``[x, y, width, height]`` of four finite numbers with non-negative size."""
        value = self.raw(name)
        if not (isinstance(value, list) and len(value) == 4 and all(is_finite_number(v) for v in value)):
            raise self.error(name, f"must be four finite numbers [x, y, width, height], got {value!r:.80}")
        if value[2] < 0 or value[3] < 0:
            raise self.error(name, f"has a negative width or height: {value!r}")
        return [float(v) for v in value]

