"""Checks of the numbers a user hands to hfddpm's functions, each refused in one line that names the argument,
what it must be and the value given, before any work starts.

A bool is neither a count nor a number (`True` would silently be 1), NumPy integers are integers and NumPy floats
are numbers; NaN and infinities are never in range.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_integer(value: Any) -> bool:
    """Whether `value` is an integer (NumPy's included) and not a bool, which is a switch, not a count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a real number (NumPy's included) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def checked_integer(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """`value` as a plain int, refused unless it is an integer (not a bool) in [low, high] (no upper bound if None).

    The range message reads "{name} must be in [low, high], got v" (or "a positive integer" / ">= low" without
    `high`).
    """
    value = _scalar(value)
    if not is_integer(value):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    if high is None and value < low:
        bound = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def checked_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    meaning: str = "",
) -> float:
    """`value` as a plain float, refused unless it is a finite real number (not a bool) in the interval from `low`
    to `high` (open at an end where asked); `meaning`, if given, says in the message what the values mean."""
    value = _scalar(value)
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    above = low < value if open_low else low <= value
    below = value < high if open_high else value <= high
    if not (math.isfinite(value) and above and below):
        left = "(" if open_low or low == -math.inf else "["
        right = ")" if open_high or high == math.inf else "]"
        interval = f"{left}{low:g}, {high:g}{right}"
        raise ValueError(
            f"{name} must be a finite number in {interval}{f' ({meaning})' if meaning else ''}, got {value}"
        )
    return value


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as its Python number (diffusers users pass `torch.tensor(0.5)`); anything else as is."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value
