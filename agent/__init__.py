"""REX Agent: find what a referring expression points at, with detectors and MLLMs together."""

from importlib.metadata import PackageNotFoundError, version

from tools.lazy import lazy_exports

try:
    __version__ = version("rex-agent")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "Agent": ".agent",
    "Configuration": ".configuration",
    "STRATEGIES": ".configuration",
    "Result": ".result",
}
__all__ = [*sorted(_EXPORTS), "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
