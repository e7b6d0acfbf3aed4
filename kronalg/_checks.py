"""Argument validation shared by the public entry points.

Messages name the argument in backticks and say what was expected and what
was received.  ``ValueError`` for values and shapes, ``TypeError`` for kinds.
"""

from __future__ import annotations

from typing import Any

from ._backend import all_finite, is_real_floating

__all__ = [
    "check_matrix",
    "check_square",
    "check_floating",
    "check_finite",
    "check_shape_pair",
    "check_same_dtype",
    "check_keep",
]


def check_matrix(x: Any, name: str) -> None:
    """Raise unless ``x`` is 2-D."""
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (a matrix), got ndim={x.ndim} with shape {tuple(x.shape)}")


def check_square(x: Any, name: str) -> None:
    """Raise unless ``x`` is a square matrix."""
    check_matrix(x, name)
    if x.shape[0] != x.shape[1]:
        raise ValueError(f"`{name}` must be square, got shape {tuple(x.shape)}")


def check_floating(xp: Any, x: Any, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating dtype."""
    if not is_real_floating(xp, x):
        raise TypeError(f"`{name}` must have a real floating dtype (float32 or float64), got {x.dtype}")


def check_finite(xp: Any, x: Any, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    if not all_finite(xp, x):
        raise ValueError(f"`{name}` must be finite, but it contains NaN or infinity")


def check_same_dtype(arrays: dict[str, Any]) -> None:
    """Raise ``TypeError`` unless all named arrays share one dtype."""
    items = list(arrays.items())
    name0, x0 = items[0]
    for name, x in items[1:]:
        if x.dtype != x0.dtype:
            raise TypeError(f"`{name}` has dtype {x.dtype} but `{name0}` has dtype {x0.dtype}; pass one dtype")


def check_shape_pair(shape: Any, name: str) -> tuple[int, int]:
    """Validate a matrix shape given as a pair of positive ints."""
    try:
        p, q = (int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be a pair of positive ints (rows, cols), got {shape!r}") from exc
    if p <= 0 or q <= 0:
        raise ValueError(f"`{name}` must be a pair of positive ints (rows, cols), got {shape!r}")
    return p, q


def check_keep(keep: str) -> None:
    """Raise unless ``keep`` is ``"a"`` or ``"b"``."""
    if keep not in ("a", "b"):
        raise ValueError(f'`keep` must be "a" (trace out the B factor) or "b" (trace out the A factor), got {keep!r}')
