"""Prompt templates: every prompt REX Agent sends lives here as a named ``.txt`` file.

Templates use ``str.format`` fields (``{expression}``, ``{target}``, ...). Load one with
``load_prompt("crs_select")`` and fill it with ``render_prompt("crs_select", **fields)``.
A folder of your own templates passed as ``directory=`` replaces the defaults of the same
names (``check_prompts_dir`` checks that each uses only its default's fields). A fixed
conversation (the authors' few-shot extraction messages, to be sent byte for byte) is a
``.json`` list of chat messages: ``load_messages(name)``.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

from tools.text import neutralise_markup

PROMPTS_DIR = Path(__file__).resolve().parent
# A template of one's own stays within what a prompt can be: the packaged ones are well inside.
MAX_TEMPLATE_CHARS = 50_000
MAX_FIELD_USES = 10


def available_prompts(directory: str | Path | None = None) -> list[str]:
    """Names of the templates in ``directory`` (default: the packaged ones)."""
    return sorted(p.stem for p in Path(directory or PROMPTS_DIR).glob("*.txt"))


def check_prompts_dir(directory: str | Path | None) -> None:
    """Refuse, in one line, a prompts folder that does not exist or holds a template REX cannot
    fill: not UTF-8, a stray ``{`` or ``}``, a format spec or conversion (``{expression:>9}``),
    or a field its packaged namesake does not have (``None``: the packaged templates)."""
    if directory is None:
        return
    from tools.errors import UserInputError

    if not Path(directory).is_dir():
        raise UserInputError(f"prompts folder {str(directory)!r}: no such folder")
    for name in available_prompts():
        file = Path(directory) / f"{name}.txt"
        if not file.is_file():
            continue
        try:
            fields = prompt_fields(name, directory)
        except UnicodeDecodeError:
            raise UserInputError(f"prompt template {str(file)!r} is not UTF-8 text") from None
        except ValueError as error:
            raise UserInputError(f"prompt template {str(file)!r}: {error} (write a literal brace as {{{{ or }}}})"
                                 ) from None
        parsed = string.Formatter().parse(load_prompt(name, directory))
        formatted = [field for _, field, spec, conversion in parsed if field is not None and (spec or conversion)]
        if formatted:  # "{expression:d}" fails, "{expression:>99999999}" fills gigabytes
            raise UserInputError(f"prompt template {str(file)!r} formats {{{formatted[0]}}} with a format spec or "
                                 "conversion: write each field plainly, as {expression}")
        text = load_prompt(name, directory)
        uses = sum(1 for _, field, _, _ in string.Formatter().parse(text) if field is not None)
        if len(text) > MAX_TEMPLATE_CHARS or uses > MAX_FIELD_USES:  # each use may hold a 2,000-character expression
            raise UserInputError(f"prompt template {str(file)!r} is {len(text):,} characters with {uses} fields: at most "
                                 f"{MAX_TEMPLATE_CHARS:,} characters and {MAX_FIELD_USES} fields")
        unknown = sorted(fields - prompt_fields(name))
        if unknown:
            known = ", ".join(f"{{{field}}}" for field in sorted(prompt_fields(name))) or "none"
            raise UserInputError(f"prompt template {str(file)!r} uses {', '.join(f'{{{f}}}' for f in unknown)}, "
                                 f"which REX does not fill; its fields: {known}")


def load_prompt(name: str, directory: str | Path | None = None) -> str:
    """The template text of ``name`` (file ``<name>.txt``), without its final newline: the one
    in ``directory`` when it has one, else the packaged one."""
    file = Path(directory or PROMPTS_DIR) / f"{name}.txt"
    return _read(str(file if file.is_file() else PROMPTS_DIR / f"{name}.txt"))


def prompt_fields(name: str, directory: str | Path | None = None) -> set[str]:
    """The ``{field}`` names a template expects (``""`` for a positional ``{}``)."""
    return {field for _, field, _, _ in string.Formatter().parse(load_prompt(name, directory)) if field is not None}


def render_prompt(name: str, directory: str | Path | None = None, **fields: object) -> str:
    """Fill template ``name``; a missing field is a ``KeyError`` naming it and the template.

    Text fields carry user text (expressions, extracted targets, dataset text): control markup
    in them (``<|im_end|>``, ``<image>``, ...) is neutralised (``tools.text.neutralise_markup``),
    so the filled prompt holds no control or image token that its template did not write.
    """
    template = load_prompt(name, directory)
    try:
        return template.format(**{key: neutralise_markup(value) if isinstance(value, str) else value
                                  for key, value in fields.items()})
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
