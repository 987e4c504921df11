"""The command line, ``agent-cli``: one module per command group (``main`` registers them all).

``from agent.cli import main`` and ``python -m agent.cli`` run it.
"""

from .main import app, main

__all__ = ["app", "main"]
