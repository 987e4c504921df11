"""Serving REX Agent over HTTP (``agent-cli serve``; needs ``pip install 'rex-agent[serve]'``)."""

from tools.lazy import lazy_exports

_EXPORTS = {
    "BackgroundServer": ".background",
    "DeviceWorker": ".workers",
    "QueueFull": ".workers",
    "ServerOptions": ".options",
    "UrlFetcher": ".fetch",
    "WorkerPool": ".workers",
    "create_app": ".app",
    "is_public_address": ".fetch",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
