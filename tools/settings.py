"""Settings declared once, as dataclass fields, and the command-line options made from them.

A field made with ``setting(default, help, ...)`` carries its help, its flag (``--field-name``
unless ``flag=`` says otherwise) and the names it was known by before (``renamed_from``); a
command built with ``command_for(SettingsClass, run)`` offers one option per field with that
help, builds the settings object from the options given, and calls ``run`` with it. A renamed
flag still works, with a one-line deprecation note. The dataclass, the flags and their help
can then never drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer

_KINDS = {"str": str, "int": int, "float": float, "bool": bool}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
            renamed_from: Sequence[str] = (), minimum: float | None = None, negatable: bool = True,
            path: bool = False) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring).

    ``flag``: the option's name (default ``--field-name``); ``renamed_from``: older flags still
    accepted, with a deprecation note; ``minimum``: the smallest value the option takes;
    ``negatable``: a bool option also has ``--no-...``; ``path``: the value is a file or folder.
    """
    metadata = {"help": help, "flag": flag, "renamed_from": tuple(renamed_from), "minimum": minimum,
                "negatable": negatable, "path": path}
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def command_for(settings_class: type, run: Callable[[Any], Any], *, doc: str, extra: Sequence[inspect.Parameter] = (),
                ) -> Callable[..., Any]:
    """A typer command with one option per field of ``settings_class`` (and the ``extra``
    parameters, passed to ``run`` by keyword) that calls ``run(settings_class(...), **extra)``."""
    declared = [item for item in dataclasses.fields(settings_class) if "help" in item.metadata]
    hints = typing.get_type_hints(settings_class)
    parameters = [_option(item, hints[item.name]) for item in declared]
    renamed = [(item, old) for item in declared for old in item.metadata["renamed_from"]]
    parameters += [_renamed_option(item, old, hints[item.name]) for item, old in renamed]
    own = {parameter.name for parameter in extra}

    def command(**values: Any) -> Any:
        for item, old in renamed:
            given = values.pop(_renamed_name(old))
            if given is not None:
                typer.echo(f"note: {old} is now {flag_of(item)}; the old name will go", err=True)
                values[item.name] = given
        passed = {name: values.pop(name) for name in list(values) if name in own}
        arguments = {name: _plain(value) for name, value in values.items()}
        return run(settings_class(**arguments), **passed)

    command.__doc__ = doc
    command.__signature__ = inspect.Signature([*parameters, *extra])  # type: ignore[attr-defined]
    return command


def _option(item: dataclasses.Field, hint: Any) -> inspect.Parameter:
    kind, optional = _kind(hint, item.metadata["path"])
    required = item.default is dataclasses.MISSING
    declaration = flag_of(item)
    if kind is bool and item.metadata["negatable"]:
        declaration += "/--no-" + declaration[2:]
    extra = {} if item.metadata["minimum"] is None else {"min": item.metadata["minimum"]}
    option = typer.Option(... if required else item.default, declaration, help=item.metadata["help"], **extra)
    annotation = Optional[kind] if optional else kind
    return inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def _renamed_option(item: dataclasses.Field, old: str, hint: Any) -> inspect.Parameter:
    kind, _ = _kind(hint, item.metadata["path"])
    declaration = old + (f"/--no-{old[2:]}" if kind is bool and item.metadata["negatable"] else "")
    option = typer.Option(None, declaration, hidden=True, help=f"Old name of {flag_of(item)}.")
    return inspect.Parameter(_renamed_name(old), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                             default=option)


def _renamed_name(flag: str) -> str:
    return "renamed_" + flag.lstrip("-").replace("-", "_")


def _kind(hint: Any, path: bool) -> tuple[type, bool]:
    """The option type of a field's annotation, and whether it may be ``None``."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    optional = type(None) in typing.get_args(hint)
    kind = arguments[0] if optional else hint
    if path:
        return Path, optional
    if kind not in _KINDS.values():
        raise TypeError(f"a setting must be str, int, float or bool (optionally None), not {hint!r}")
    return kind, optional


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
