"""Trace-time checks and conversions of the arguments every loss shares.

Everything here runs while JAX traces a loss: it sees shapes, dtypes and the
values of Python / NumPy hyperparameters, never traced values. A bad argument
raises ``ValueError`` / ``TypeError`` naming the argument and what was given.
"""

from __future__ import annotations

import numbers
from typing import Literal, TypeGuard

import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike

Number = int | float
"""A Python number known at trace time (``base``, ``eps``)."""
ScalarLike = int | float | np.integer | np.floating | Array
"""A hyperparameter that may also be a traced scalar (``label_smoothing``, ...)."""
IndexLike = int | np.integer
"""A Python or NumPy integer known at trace time (``ignore_index``, ``chunk_size``)."""
Reduction = Literal["none", "sum", "mean", "sum_over_batch_size"]
REDUCTIONS = ("none", "sum", "mean", "sum_over_batch_size")


def is_concrete_number(x: object) -> TypeGuard[float]:
    """True for real Python / NumPy scalars (values known at trace time)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_static_zero(x: object) -> bool:
    """True when ``x`` is a Python / NumPy number equal to 0 (known at trace time).

    Options that are statically 0 (``label_smoothing``, ``z_loss``, ``gamma``) skip
    their work; a traced value never does.
    """
    return is_concrete_number(x) and x == 0


def concrete_values(x: object) -> np.ndarray | None:
    """The value of a hyperparameter known at trace time, or None if traced."""
    if x is None or isinstance(x, Tracer):
        return None
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def check_range(
    value: object, name: str, lo: float, hi: float, *, hi_open: bool = False
) -> None:
    """Raise if a known (non-traced) ``value`` has an element outside [lo, hi]."""
    v = concrete_values(value)
    if v is None:
        return
    bad = (v < lo) | (v >= hi if hi_open else v > hi) | np.isnan(v)
    if np.any(bad):
        right = ")" if hi_open else "]"
        raise ValueError(f"`{name}` must be in [{lo:g}, {hi:g}{right}, got {value!r}.")


def check_nonneg(value: object, name: str) -> None:
    """Raise if a known (non-traced) ``value`` has a negative or NaN element."""
    v = concrete_values(value)
    if v is not None and np.any((v < 0) | np.isnan(v)):
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


def check_label_smoothing(label_smoothing: object) -> None:
    check_range(label_smoothing, "label_smoothing", 0.0, 1.0, hi_open=True)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")


def check_base(base: Number | None) -> None:
    if base is None:
        return
    if not is_concrete_number(base) or base <= 0 or base == 1:
        raise ValueError(f"`base` must be None or a number > 0 and != 1, got {base!r}.")


def check_normalizer(normalizer: object, reduction: str) -> None:
    """``normalizer``: None, or a finite real scalar > 0, with a scalar
    ``reduction``.

    Python / NumPy numbers and concrete arrays are checked here (trace time):
    ``bool``, strings, complex numbers, non-numeric dtypes, shapes other than
    ``()``, ``inf``, NaN and values ``<= 0`` raise, naming ``normalizer``. A
    traced scalar's dtype is checked here and its value by `jaxce.validate`
    (``normalizer=``), which raises at run time.
    """
    if normalizer is None:
        return
    if reduction == "none":
        raise ValueError(
            "`normalizer` divides a summed loss: it needs a scalar `reduction` "
            '("sum", "mean" or "sum_over_batch_size"), got reduction="none".'
        )
    kind = "a finite real number > 0 or a scalar array of one"
    if isinstance(normalizer, (bool, np.bool_, str, bytes)):
        raise TypeError(f"`normalizer` must be {kind}, got {normalizer!r}.")
    dtype = getattr(normalizer, "dtype", None)
    if dtype is None:  # a Python number, list, ...
        try:
            dtype = np.asarray(normalizer).dtype
        except (TypeError, ValueError):
            raise TypeError(
                f"`normalizer` must be {kind}, got {normalizer!r}."
            ) from None
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(
            f"`normalizer` must be {kind}, got {normalizer!r} of dtype {dtype}."
        )
    shape = getattr(normalizer, "shape", None)
    if shape is None:  # a Python number or list
        shape = np.shape(np.asarray(normalizer))
    if tuple(shape) != ():
        raise ValueError(f"`normalizer` must be a scalar, got shape {tuple(shape)}.")
    v = concrete_values(normalizer)
    if v is not None and not (np.isfinite(v) and v > 0):
        raise ValueError(
            f"`normalizer` must be finite and > 0, got {normalizer!r}: it divides "
            "the summed loss (inf would silently give a loss and gradient of 0)."
        )


def check_eps(eps: Number | None) -> None:
    if eps is not None and (not is_concrete_number(eps) or not 0.0 < eps < 0.5):
        raise ValueError(f"`eps` must be None or in (0, 0.5), got {eps!r}.")


def check_ignore_index(ignore_index: object) -> int | None:
    """``ignore_index`` as a Python int (any integer scalar: int, ``np.int64``)."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"`ignore_index` must be an int, got {ignore_index!r}.")
    return int(ignore_index)


def check_positive_int(value: object, name: str) -> int | None:
    """``None`` or an int >= 1 (block sizes such as ``chunk_size``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be None or an int, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}.")
    return int(value)


def compute_dtype(*dtypes) -> jnp.dtype:
    """The float dtype computation happens in: at least float32 (float64 kept)."""
    out = jnp.dtype(jnp.float32)
    for d in dtypes:
        d = jnp.dtype(d)
        if jnp.issubdtype(d, jnp.floating) and d.itemsize > out.itemsize:
            out = d
    return out


def as_float_input(x: ArrayLike, name: str) -> Array:
    """Turn ``x`` into a floating array; integer input is converted to float32."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real, got dtype {x.dtype}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def normalize_axis(axis: int, ndim: int, name: str = "logits") -> int:
    if not isinstance(axis, int):
        raise TypeError(f"`axis` must be an int, got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"`axis`={axis} is out of range for `{name}` with {ndim} dimension(s)."
        )
    return axis % ndim


def check_same_shape(a: Array, b: Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got "
            f"{a.shape} and {b.shape}."
        )


def check_integer_labels(labels: Array, name: str = "labels") -> None:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must be integer class indices for a sparse loss, got dtype "
            f"{labels.dtype}; use the non-sparse loss for one-hot or soft targets."
        )


def check_class_weights(
    class_weights: ArrayLike | None,
    num_classes: int,
    dtype,
    name: str = "class_weights",
) -> Array | None:
    """Return class weights as a ``(num_classes,)`` array of ``dtype`` (or None)."""
    if class_weights is None:
        return None
    cw = jnp.asarray(class_weights)
    if cw.shape != (num_classes,):
        raise ValueError(
            f"`{name}` must have shape ({num_classes},) (one per class), "
            f"got {cw.shape}."
        )
    return cw.astype(dtype)


def broadcast_to_elements(value, shape: tuple[int, ...], name: str, dtype) -> Array:
    """Broadcast a per-element option (``weights``, ``where``) to ``shape``."""
    value = jnp.asarray(value)
    try:
        out_shape = jnp.broadcast_shapes(value.shape, shape)
    except ValueError:
        out_shape = None
    if out_shape != tuple(shape):
        raise ValueError(
            f"`{name}` of shape {value.shape} does not broadcast to the per-element "
            f"loss shape {tuple(shape)}."
        )
    return jnp.broadcast_to(value.astype(dtype), shape)


def check_bool_mask(where) -> Array | None:
    """``where`` as a boolean array (or None)."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
    return where


def element_mask(where, shape: tuple[int, ...]) -> Array:
    """Boolean presence mask of the per-element loss shape (all True if None)."""
    where = check_bool_mask(where)
    if where is None:
        return jnp.ones(shape, dtype=bool)
    return broadcast_to_elements(where, shape, "where", bool)
