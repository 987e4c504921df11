"""Finding model weights: a local folder, the Hugging Face cache, or a download.

``from_pretrained`` alone retries an unreachable Hub for minutes before failing with
a generic message; ``resolve_checkpoint`` answers at once with one line that names
the missing checkpoint and how to provide it.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from .errors import CheckpointNotFoundError, RexError, UserInputError


@contextmanager
def unloadable_checkpoint(name_or_path: str | os.PathLike, kind: str) -> Iterator[None]:
    """Turn transformers' errors on a checkpoint it cannot read (a bad ``config.json``, corrupt
    weights, a folder of another kind) into one ``UserInputError`` naming it."""
    try:
        yield
    except RexError:
        raise
    except _load_errors() as error:  # bad JSON, corrupt weights, "unrecognized configuration class"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserInputError(f"cannot load {os.fspath(name_or_path)!r} as a {kind} checkpoint: {first_line}") from None


def _load_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError]
    try:
        from safetensors import SafetensorError  # a truncated or corrupt .safetensors file

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - transformers always brings safetensors
        pass
    return tuple(errors)


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    hint: str = "",
) -> str:
    """Return something ``from_pretrained`` can load without waiting on a dead network.

    - an existing local file or folder: returned as is;
    - a Hub id already in the cache: the cached snapshot folder;
    - a Hub id not cached: returned as is when the Hub answers (it will download);
      otherwise ``CheckpointNotFoundError``.

    ``hint`` is appended to the error (e.g. "or pass --detector PATH").
    """
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    if _looks_like_path(name):
        raise CheckpointNotFoundError(f"checkpoint {name!r}: no such file or folder")

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except HFValidationError:
        raise CheckpointNotFoundError(f"checkpoint {name!r} is neither a local path nor a valid Hub id") from None
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    cache = cache_dir or constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable(constants.ENDPOINT):
        reason = f"the Hub ({constants.ENDPOINT}) cannot be reached"
    else:
        return name
    suffix = f", {hint}" if hint else ""
    raise CheckpointNotFoundError(
        f"checkpoint {name!r} is not in the Hugging Face cache ({cache}) and {reason}: "
        f"run `hf download {name}` where there is internet and copy the cache here{suffix}"
    )


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is meant as a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
