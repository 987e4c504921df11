"""``python -m agent.cli``: the same as ``agent-cli``."""

import sys

from .main import main

sys.exit(main())
