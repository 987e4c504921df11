"""Serving REX Agent over HTTP (``agent-cli serve``; needs ``pip install 'rex-agent[serve]'``)."""

from .app import ServerOptions, create_app
from .background import BackgroundServer
from .fetch import UrlFetcher, is_public_address
from .workers import DeviceWorker, QueueFull, WorkerPool

__all__ = [
    "BackgroundServer", "DeviceWorker", "QueueFull", "ServerOptions", "UrlFetcher", "WorkerPool", "create_app",
    "is_public_address",
]
