"""The size check shared by the model constructors."""

from __future__ import annotations

import numbers


def check_size(name: str, value: object, low: int) -> int:
    """``value`` as an int >= ``low`` (NumPy integers accepted, ``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int >= {low}, got {value!r}.")
    if value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
    return int(value)
