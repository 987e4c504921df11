"""Which values read from user files are numbers REX can compute with."""

from __future__ import annotations

import math
from typing import Any


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite as a float: nan, inf and integers too large
    for a float (a 400-digit integer in a JSON file) are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
