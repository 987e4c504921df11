"""Running a typer app or command with REX Agent's error contract.

User mistakes (``UserInputError``, missing files or weights) exit with code 2 and one
line on stderr; other failures exit with code 1 and a hint to rerun with ``--debug``,
which shows the traceback instead. ``agent-cli`` and every command run on its own
(``python -m agent.cli.eval``, ``python -m finetune.cli``, ...) answer the same way.
"""

from __future__ import annotations

import errno
import sys

import typer

from typing import Callable

from .errors import RexError, UserInputError

DEBUG_FLAG = "--debug"


def run_app(app: typer.Typer, argv: list[str] | None, prog_name: str, *, debug: bool | None = None) -> int:
    """Run ``app`` on ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    ``debug`` (default: whether ``argv`` holds ``--debug``) shows tracebacks instead of one line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args if debug is None else debug
    try:
        # Without standalone mode typer returns, rather than exits with, a command's code
        # (typer.Exit(n), or 130 after Ctrl-C), so it must be passed on.
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
        return code if isinstance(code, int) else 0
    except typer.Exit as done:
        return done.exit_code
    except typer.TyperException as usage:  # bad flags or missing arguments
        usage.show()
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except RexError as error:
        if debug:
            raise
        typer.echo(f"error: {error}", err=True)
        return 2 if isinstance(error, (UserInputError, OSError)) else 1
    except Exception as error:  # noqa: BLE001 - the one place that turns crashes into a message
        if debug:
            raise
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:  # the disk, not the program
            where = f" writing {error.filename}" if error.filename else ""
            typer.echo(f"error: no space left on the device{where}; free some space and rerun to continue", err=True)
            return 2
        if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:  # a name the user gave
            name = str(error.filename or "")
            shown = f" {name[:80]!r}..." if name else ""
            typer.echo(f"error: a file name{shown} is longer than the file system allows (255 bytes a name)", err=True)
            return 2
        typer.echo(f"internal error: {type(error).__name__}: {error} (rerun with --debug for details)", err=True)
        return 1


def run_command(command: Callable, argv: list[str] | None, prog_name: str) -> int:
    """Run one typer command as its own program; ``--debug`` may stand anywhere in ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    return run_app(app, [arg for arg in args if arg != DEBUG_FLAG], prog_name, debug=DEBUG_FLAG in args)
