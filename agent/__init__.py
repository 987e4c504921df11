"""REX Agent: find what a referring expression points at, with detectors and MLLMs together."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rex-agent")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

from .agent import Agent
from .configuration import STRATEGIES, Configuration
from .result import Result

__all__ = ["Agent", "Configuration", "Result", "STRATEGIES", "__version__"]
