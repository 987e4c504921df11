"""Prompt templates: every prompt REX Agent sends lives here as a named ``.txt`` file.

Templates use ``str.format`` fields (``{expression}``, ``{target}``, ...). Load one with
``load_prompt("crs_select")`` and fill it with ``render_prompt("crs_select", **fields)``.
A folder of your own templates with the same names can replace the defaults by
passing ``directory=``. A fixed conversation (the authors' few-shot extraction messages,
to be sent byte for byte) is a ``.json`` list of chat messages: ``load_messages(name)``.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent


def available_prompts(directory: str | Path | None = None) -> list[str]:
    """Names of the templates in ``directory`` (default: the packaged ones)."""
    return sorted(p.stem for p in Path(directory or PROMPTS_DIR).glob("*.txt"))


def check_prompts_dir(directory: str | Path | None) -> None:
    """Refuse a prompts folder that does not exist (``None``: the packaged templates)."""
    if directory is not None and not Path(directory).is_dir():
        from tools.errors import UserInputError

        raise UserInputError(f"prompts folder {str(directory)!r}: no such folder")


def load_prompt(name: str, directory: str | Path | None = None) -> str:
    """The template text of ``name`` (file ``<name>.txt``), without its final newline."""
    return _read(str(Path(directory or PROMPTS_DIR) / f"{name}.txt"))


def prompt_fields(name: str, directory: str | Path | None = None) -> set[str]:
    """The ``{field}`` names a template expects."""
    return {field for _, field, _, _ in string.Formatter().parse(load_prompt(name, directory)) if field}


def render_prompt(name: str, directory: str | Path | None = None, **fields: object) -> str:
    """Fill template ``name``; a missing field is a ``KeyError`` naming it and the template."""
    template = load_prompt(name, directory)
    try:
        return template.format(**fields)
    except KeyError as missing:
        raise KeyError(f"prompt {name!r} needs field {missing.args[0]!r}") from None


def load_messages(name: str) -> list[dict[str, str]]:
    """The chat messages of ``<name>.json`` (a list of ``{"role", "content"}``), exactly as written."""
    import json

    return [dict(message) for message in json.loads(_read(str(PROMPTS_DIR / f"{name}.json")))]


@lru_cache(maxsize=None)
def _read(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no prompt template {file.name!r} in {file.parent}")
    return file.read_text(encoding="utf-8").rstrip("\n")
