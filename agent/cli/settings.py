"""The agent's settings as command-line flags, generated from ``Configuration``'s fields.

``@with_settings()`` gives a typer command one option per setting (``router_top_k`` becomes
``--router-top-k``, a boolean ``--focus/--no-focus``), grouped in ``--help`` as
``configuration.GROUPS`` says, plus ``--config FILE``; the command receives the loaded
``settings: Configuration`` instead. A flag left out keeps the precedence of
``Configuration.load``: flag > ``REX_*`` environment > config file > default.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import typer

from agent.configuration import ENV_PREFIX, Configuration

_TYPES = {"str": str, "bool": bool, "int": int, "float": float}


def flag_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def with_settings(*, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                  defaults: Mapping[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """Decorate a command taking ``settings: Configuration`` with the settings' flags.

    ``only``/``exclude`` choose the settings offered as flags (the others still come from the
    environment and the config file); ``defaults`` replace the fields' defaults for this
    command (e.g. the server's smaller image limit), below every other source.
    """
    chosen = [item for item in fields(Configuration)
              if (only is None or item.name in only) and item.name not in set(exclude)]
    defaults = dict(defaults or {})

    def decorate(command: Callable) -> Callable:
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items()
               if name not in ("settings", "config_file")]
        generated = [_option(item, defaults.get(item.name, item.default)) for item in chosen]
        config = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
            default=typer.Option(None, "--config", help="Settings file (TOML or JSON).", rich_help_panel="Method"),
        )
        names = [item.name for item in chosen]

        wants_file = "config_file" in inspect.signature(command).parameters

        @functools.wraps(command)
        def run(**arguments: Any) -> Any:
            values = {name: arguments.pop(name) for name in names}
            config_file = arguments.pop("config")
            settings = Configuration.load(config_file, defaults=defaults, **values)
            if settings.cache_dir is not None:  # written during the run: probed before any work
                from tools.files import check_output_folder

                check_output_folder(settings.cache_dir, "--cache-dir")
                check_output_folder(Path(settings.cache_dir) / "detections", "--cache-dir's detections folder")
            # A command that says what a settings file holds beyond the settings (its calibration) gets its path.
            extra = {"config_file": config_file or os.environ.get(ENV_PREFIX + "CONFIG")} if wants_file else {}
            return command(settings=settings, **arguments, **extra)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated + [config]
        run.__signature__ = inspect.Signature(parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        del run.__wrapped__  # typer must read the signature above, not the command's
        return run

    return decorate


def _option(item: Field, default: Any) -> inspect.Parameter:
    kind = _TYPES[item.type.split("|")[0].strip()]
    declaration = flag_name(item.name)
    if kind is bool:
        declaration += f"/--no-{item.name.replace('_', '-')}"
    shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else default
    # The option's own default is None, so that an absent flag leaves the setting to the other sources.
    # typer's help is rich markup: the bracket is escaped so that it shows.
    option = typer.Option(None, declaration, help=f"{item.metadata['help']} \\[default: {shown}]",
                          rich_help_panel=item.metadata["group"], show_default=False)
    return inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind], default=option)
