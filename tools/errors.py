"""Exception types. User mistakes and missing resources get their own classes so the
CLI can answer them with one line (exit code 2) instead of a traceback."""

from __future__ import annotations


class RexError(Exception):
    """Base class of every error REX Agent raises on purpose."""


class UserInputError(RexError, ValueError):
    """A bad argument from the user: empty expression, focus span outside the text, ..."""


class ImageLoadError(UserInputError):
    """An image that cannot be read: missing, not an image, corrupt, too large."""


class CheckpointNotFoundError(RexError, OSError):
    """Model weights that are neither a local folder nor reachable on the Hub (or its cache)."""


class ModelOutputError(RexError, ValueError):
    """A model answer that cannot be parsed (malformed box text, no option letter, ...)."""


class RemoteServiceError(RexError, RuntimeError):
    """A remote model endpoint failed after retries, or refused the request."""


class ExtractionFailedError(ModelOutputError):
    """The authors' target extraction dropped this expression's batch (an unreadable reply, or no
    answer for it): the reference profile records the sample as ``extraction_failed``."""
