"""Keeping a detector's answers on disk, so runs over the same data do not detect twice.

Comparing strategies on a benchmark asks the detector the same questions again and
again: ``sfa``, ``crs`` and ``sfa+crs`` all detect the full expression (with the same
focus span) and the routing strategies also the target phrase. :class:`CachedDetector`
answers a query it has seen from a file and asks the wrapped detector only about the
others.

A query is keyed by the model's name (the checkpoint as named in the settings, plus
anything else that changes its answers, such as the dtype), a SHA-256 of the image's
pixels (mode, size and bytes: the same picture under another file name is a hit, an
edited one a miss), the text and the focus span. Each answer is one ``.npz`` file,
written to a temporary file, fsynced and renamed into place, so a run killed at any
moment leaves either the whole file or none; an unreadable file counts as a miss and
is rewritten. Several processes may share one cache folder.

The key names the checkpoint, not its weights: after replacing the weights in a
checkpoint folder, use a fresh cache folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import weakref
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..detections import Detections
from ..files import write_atomically
from ..text import Span
from .base import Detector, focus_spans

# Bumped when the file layout changes, so old files are never misread.
FORMAT_VERSION = 1
_DATA_PREFIX = "data."


class CachedDetector:
    """``detector`` with its answers kept in ``directory`` (see the module docstring).

    ``model_name`` must tell apart every model (and setting) that answers differently.
    The wrapped detector must return :class:`Detections`, as the bundled ones do.
    ``hits`` and ``misses`` count the queries answered from disk and by the detector.
    """

    def __init__(self, detector: Detector, directory: str | os.PathLike, model_name: str) -> None:
        self.detector = detector
        self.directory = Path(directory)
        self.model_name = model_name
        self.hits = 0
        self.misses = 0
        # Datasets ask several queries per image in a row: hash its pixels once.
        self._last_image: tuple[weakref.ref, str] | None = None

    @property
    def resizes(self) -> tuple[str, ...]:
        """The wrapped detector's ``resize`` choices (none: it takes no ``resize=``)."""
        return tuple(getattr(self.detector, "resizes", ()))

    def detect(self, image: Image.Image, text: str, focus: Span | None = None, **resize: str) -> Detections:
        return self.detect_many(image, [text], [focus], **resize)[0]

    def detect_many(
        self, image: Image.Image, texts: Sequence[str], focuses: Sequence[Span | None] | None = None, **resize: str
    ) -> list[Detections]:
        """Answers for ``(text, focus)`` pairs on ``image``; only the uncached ones reach the detector.
        ``resize=`` goes to the detector and into the key (the default's keys stay as they were)."""
        focuses = focus_spans(texts, focuses)
        image_digest = self._image_digest(image)
        files = [self._file(image_digest, text, focus, resize.get("resize")) for text, focus in zip(texts, focuses)]
        queries = dict(zip(files, zip(texts, focuses)))  # a query asked twice is one file
        answers = {file: _read(file) for file in queries}
        missing = [file for file, answer in answers.items() if answer is None]
        self.hits += len(queries) - len(missing)
        self.misses += len(missing)
        if missing:
            texts_missing, focuses_missing = zip(*(queries[file] for file in missing))
            for file, detections in zip(missing, self._detect(image, list(texts_missing), list(focuses_missing),
                                                              resize)):
                _write(file, detections)
                answers[file] = detections
        return [answers[file] for file in files]

    def _detect(self, image: Image.Image, texts: list[str], focuses: list[Span | None],
                resize: dict[str, str]) -> list[Detections]:
        if hasattr(self.detector, "detect_many"):
            return list(self.detector.detect_many(image, texts, focuses, **resize))
        return [self.detector.detect(image, text, focus=focus, **resize) for text, focus in zip(texts, focuses)]

    def _file(self, image_digest: str, text: str, focus: Span | None, resize: str | None = None) -> Path:
        span = None if focus is None else [int(v) for v in focus]
        key_parts = [FORMAT_VERSION, self.model_name, image_digest, text, span] + ([resize] if resize else [])
        query = json.dumps(key_parts, ensure_ascii=False)
        key = hashlib.sha256(query.encode("utf-8")).hexdigest()
        # Two-letter subfolders keep folders small on benchmarks of tens of thousands of queries.
        return self.directory / key[:2] / f"{key}.npz"

    def _image_digest(self, image: Image.Image) -> str:
        if self._last_image is not None and self._last_image[0]() is image:
            return self._last_image[1]
        digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
        digest.update(image.tobytes())
        self._last_image = (weakref.ref(image), digest.hexdigest())
        return self._last_image[1]

    def __repr__(self) -> str:
        return f"CachedDetector({self.detector!r}, directory={str(self.directory)!r}, model_name={self.model_name!r})"


def _read(file: Path) -> Detections | None:
    """The stored answer, or ``None`` when there is none or it cannot be read."""
    try:
        with np.load(file, allow_pickle=False) as stored:
            labels = stored["labels"].tolist() if "labels" in stored.files else None
            data = {name[len(_DATA_PREFIX) :]: stored[name] for name in stored.files if name.startswith(_DATA_PREFIX)}
            return Detections(stored["boxes"], stored["scores"], labels, data)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _write(file: Path, detections: Detections) -> None:
    """Store ``detections`` atomically: readers see the whole file or none."""
    arrays = {"boxes": detections.boxes, "scores": detections.scores}
    if detections.labels is not None:
        arrays["labels"] = np.array(detections.labels, dtype=str)
    arrays.update({_DATA_PREFIX + name: values for name, values in detections.data.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(file, buffer.getvalue())
