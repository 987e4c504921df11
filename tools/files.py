"""Writing files so that a crash (even ``kill -9``) never leaves half of one.

Whole files go through a temporary file and one rename (``write_atomically``,
``replaced_atomically``); JSON Lines logs append one fsynced line at a time
(``JsonLinesAppender``) and repair a torn last line when reopened.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import UserInputError

MAX_NAME_BYTES = 255  # one file name, on every common file system
# The settings file each command marks its output folder with: no command writes into another's.
RUN_MARKERS = {"run.json": "an eval run (run.json)", "train_config.json": "a fine-tuning run (train_config.json)",
               "build.json": "a finetune-data build (build.json)"}
EVAL_MARKER, TRAIN_MARKER, BUILD_MARKER = RUN_MARKERS


def foreign_runs(own: str) -> dict[str, str]:
    """The run markers of the commands other than the one that writes ``own``."""
    return {marker: what for marker, what in RUN_MARKERS.items() if marker != own}


@contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path next to ``path`` that replaces ``path`` in one rename when the
    block ends without error: readers (and a crash) see the old file or the whole new one.
    Whatever writes the temporary file must flush and fsync it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are private (0600); these follow the umask like any other output,
    # and the random suffix keeps concurrent writers (shards, processes) apart.
    # The name is cut short, so that a final name near the file system's limit still has one.
    temporary = path.with_name(f".{path.name[:64]}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_output_folder(path: str | os.PathLike, flag: str = "output") -> None:
    """Refuse an output folder that names an existing file or cannot take a new file, before
    any work that would be lost (``probe_folder``)."""
    try:
        is_file = Path(path).exists() and not Path(path).is_dir()
    except OSError as error:  # e.g. a name over the file system's limit
        raise UserInputError(f"cannot write {flag} {os.fspath(path)[:120]!r}: {error.strerror or error}") from None
    if is_file:
        raise UserInputError(f"{flag} {os.fspath(path)!r} is a file, not a folder")
    probe_folder(Path(path), f"{flag} {os.fspath(path)!r}")


def check_writable(path: str | os.PathLike, flag: str = "output") -> None:
    """Refuse an output file that names a folder, an existing file that cannot be written, or
    a folder that cannot be created or take a new file (``probe_folder``)."""
    path = Path(path)
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise UserInputError(f"cannot write {flag} {os.fspath(path)[:120]!r}...: the file name is longer than "
                             f"{MAX_NAME_BYTES} bytes")
    try:
        if path.is_dir():
            raise UserInputError(f"cannot write {flag} {os.fspath(path)!r}: it is a folder")
        if path.exists() and not os.access(path, os.W_OK):
            raise UserInputError(f"cannot write {flag} {os.fspath(path)!r}: the file is read-only")
    except OSError as error:  # e.g. a folder name over the limit
        raise UserInputError(f"cannot write {flag} {os.fspath(path)[:120]!r}: {error.strerror or error}") from None
    probe_folder(path.parent if str(path.parent) else Path("."), f"{flag} {os.fspath(path)!r}")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file (through links too; by absolute path when one is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_outputs(folder: str | os.PathLike, written: Sequence[str], inputs: Mapping[str, Any],
                  flag: str = "--output", *, folders: Sequence[str] = (), foreign: Mapping[str, str] = {}) -> None:
    """Before any work: refuse a file a command writes in ``folder`` (``written`` names) that is a
    folder now, a folder it writes (``folders``) that is a file, a folder holding another
    command's run (``foreign``: the file that marks it -> what it is), or one of the command's
    ``inputs`` (flag -> path or ``None``) among the files it writes, which the run would destroy."""
    folder = Path(folder)
    try:
        other = next((what for marker, what in foreign.items() if (folder / marker).exists()), None)
        for name in folders:
            if (folder / name).exists() and not (folder / name).is_dir():
                raise UserInputError(f"{flag} {os.fspath(folder)!r} holds a file {name!r} where the command writes "
                                     "a folder; move it or choose another --output")
        for name in written:
            target = folder / name
            if target.is_dir():
                raise UserInputError(f"{flag} {os.fspath(folder)!r} holds a folder {name!r} where the command writes "
                                     "a file; move it or choose another --output")
            taken = next((given for given, source in inputs.items()
                          if source is not None and target.exists() and same_file(target, source)), None)
            if taken:
                raise UserInputError(f"{taken} {os.fspath(inputs[taken])!r} is the {name} this command writes in "
                                     f"{os.fspath(folder)!r}: write elsewhere")
    except OSError as error:
        raise UserInputError(f"cannot write {flag} {os.fspath(folder)!r}: {error.strerror or error}") from None
    if other:
        raise UserInputError(f"{flag} {os.fspath(folder)!r} holds {other}: its files would be overwritten; choose "
                             "another --output")


def probe_folder(folder: Path, what: str) -> None:
    """Check for real that ``folder`` can be created and take a new file: the folders missing
    are made, a temporary file is written there and removed, and the folders made are removed
    again, so the check leaves nothing behind. ``UserInputError`` naming ``what`` otherwise."""
    missing = []
    try:
        for ancestor in (folder, *folder.parents):
            if ancestor.exists():
                break
            missing.append(ancestor)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rex-write-test-"):
            pass
    except OSError as error:
        raise UserInputError(f"cannot write {what}: {error.strerror or error}") from None
    finally:
        for made in missing:
            try:
                made.rmdir()
            except OSError:
                break


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, *, wait: bool = False, shared: bool = False
                   ) -> Iterator[None]:
    """Hold an exclusive lock on file ``path`` (created if needed) while the block runs.

    The lock is advisory (``flock``): another REX process asking for it gets a
    ``UserInputError`` naming ``what`` and the holder's process id, or with ``wait`` waits
    until the holder is done; the operating system releases it when the holder exits, even
    after ``kill -9``. ``shared``: a lock several holders may take together, which an
    exclusive one excludes (and is excluded by). Where ``fcntl`` is missing (Windows) nothing
    is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the machines this runs on
        yield
        return
    path = Path(path)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UserInputError(
                f"{what} is being written by another process (pid {holder}); wait for it, or use another --output"
            ) from None
        try:
            if not shared:  # shared holders would overwrite each other's pid
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename; text that cannot
    be UTF-8 (a lone surrogate) is written as its backslash escape (in a JSON string, the same
    text again), never refused half-way."""
    with replaced_atomically(path) as temporary, temporary.open("xb") as out:
        out.write(data.encode("utf-8", errors="backslashreplace") if isinstance(data, str) else data)
        out.flush()
        os.fsync(out.fileno())


def read_settings_file(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object a command wrote to ``path`` (``what``: e.g. "the run's settings"); a file that
    is not one (edited, truncated, nested too deeply) is a ``UserInputError`` naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, bad UTF-8, huge ints
        raise UserInputError(f"{os.fspath(path)}: cannot be read as {what} ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{os.fspath(path)}: not {what} (a JSON object)")
    return data


def read_json_lines(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for each line of a JSON Lines file, ``where`` being ``"PATH: line N"``.

    Blank lines are skipped. A last line that does not end in a newline and does not parse is
    a write interrupted by a crash: it is skipped with a warning. Any other line that is not
    JSON is a ``UserInputError`` naming it. The file must exist (callers word that error).
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, device or pipe (/dev/zero never ends)
        raise UserInputError(f"{path}: not a regular file, expected JSON Lines")
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                record = json.loads(line)
            except RecursionError:
                raise UserInputError(f"{where}: nested too deeply") from None
            except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, or a 5,000-digit integer
                if not line.endswith(b"\n"):
                    warnings.warn(f"{where}: ignoring a torn last line (an interrupted write)", stacklevel=2)
                    return
                raise UserInputError(f"{where}: not valid JSON ({error})") from None
            yield where, record


class JsonLinesAppender:
    """Appends JSON objects to a JSON Lines file, each line flushed and fsynced before ``write`` returns.

    Opening repairs a file whose last line was torn by a crash (``repair_torn_tail``).
    Use as a context manager, or call ``close``.
    """

    def __init__(self, path: str | os.PathLike, default: Callable[[Any], Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._default = default
        repair_torn_tail(self.path)
        # A lone surrogate (an id read from JSON as "\ud800") goes out as that same escape, which
        # reads back to the same text, instead of stopping the run at that record for good.
        self._handle = self.path.open("a", encoding="utf-8", errors="backslashreplace")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=self._default)
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonLinesAppender":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def repair_torn_tail(path: str | os.PathLike) -> None:
    """Make a JSON Lines file end with a complete line: a last record that only lacks its
    newline gets one; anything else after the last newline (an interrupted write) is cut off."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except RecursionError:  # whole but unreadable here: kept, for the reader to name
            handle.write(b"\n")
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.warn(f"{path}: cutting off a torn last line ({len(data) - start} bytes)", stacklevel=3)
            handle.truncate(start)
        else:
            handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())
