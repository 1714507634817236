"""Option handling shared by every loss: checks, dtypes, masks, reductions, base.

Every loss in jaxce computes a per-element loss ``L`` (already including class
weights), a per-element *denominator weight* ``d`` (the weight an element carries in
``reduction="mean"``) and a per-element *presence* mask, then hands them to
:func:`reduce_loss`. Nothing else in the package implements a reduction.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, TypeGuard

import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike

Number = int | float
"""A Python number known at trace time (``base``, ``eps``)."""
ScalarLike = int | float | np.floating | Array
"""A hyperparameter that may also be a traced scalar (``label_smoothing``, ...)."""
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


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")


def check_label_smoothing(label_smoothing: float | ArrayLike) -> None:
    check_range(label_smoothing, "label_smoothing", 0.0, 1.0, hi_open=True)


def check_base(base: Number | None) -> None:
    if base is None:
        return
    if not is_concrete_number(base) or base <= 0 or base == 1:
        raise ValueError(f"`base` must be None or a number > 0 and != 1, got {base!r}.")


def check_nonneg(value: float | ArrayLike, name: str) -> None:
    v = concrete_values(value)
    if v is not None and np.any((v < 0) | np.isnan(v)):
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


def check_eps(eps: Number | None) -> None:
    if eps is not None and (not is_concrete_number(eps) or not 0.0 < eps < 0.5):
        raise ValueError(f"`eps` must be None or in (0, 0.5), got {eps!r}.")


def resolve_eps(eps: Number | None, dtype) -> float:
    """``None`` means the machine epsilon of the compute dtype."""
    check_eps(eps)
    return float(jnp.finfo(dtype).eps) if eps is None else float(eps)


def clip_bounds(eps: float, dtype) -> tuple[float, float]:
    """``(eps, 1 - eps)`` for clipping probabilities, with ``1 - eps`` kept below 1.

    ``1 - eps`` rounds to 1 in the compute dtype when ``eps`` is tiny (``1e-15``
    in float32); the largest number below 1 is used then, so ``log(1 - p)`` stays
    finite.
    """
    return eps, min(1.0 - eps, 1.0 - float(jnp.finfo(dtype).epsneg))


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


def check_class_weights(class_weights: ArrayLike | None, num_classes: int, dtype):
    """Return class weights as a ``(num_classes,)`` array of ``dtype`` (or None)."""
    if class_weights is None:
        return None
    cw = jnp.asarray(class_weights)
    if cw.shape != (num_classes,):
        raise ValueError(
            f"`class_weights` must have shape ({num_classes},) (one per class), "
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


def element_mask(where, shape: tuple[int, ...]) -> Array:
    """Boolean presence mask of the per-element loss shape (all True if None)."""
    if where is None:
        return jnp.ones(shape, dtype=bool)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
    return broadcast_to_elements(where, shape, "where", bool)


def split_where(where, logits_ndim: int, axis: int):
    """Split ``where`` into (class_mask moved to the last axis, element mask).

    A ``where`` with as many dimensions as the logits is a per-class mask (it
    removes classes from the softmax); anything else is a per-element mask.
    """
    if where is None:
        return None, None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
    if where.ndim == logits_ndim:
        return jnp.moveaxis(where, axis, -1), None
    return None, where


def safe_xlogy(t: Array, logp: Array) -> Array:
    """``t * logp`` with ``0 * log 0 = 0`` and finite gradients where ``t == 0``."""
    # One select suffices: where t == 0 the product is 0 * 0, and neither operand's
    # cotangent involves the (possibly infinite) logp.
    return t * jnp.where(t == 0, jnp.zeros((), logp.dtype), logp)


def log_base_factor(base: Number | None) -> float:
    check_base(base)
    return 1.0 if base is None else 1.0 / math.log(base)


def reduce_loss(
    loss: Array,
    *,
    present: Array,
    weights: ArrayLike | None,
    denom_weights: Array | None = None,
    reduction: str,
    base: Number | None,
    out_dtype,
) -> Array:
    """Apply ``weights``, presence, a reduction and a log base to a per-element loss.

    Args:
        loss: per-element loss (class weights already applied), compute dtype.
        present: boolean mask of elements that count.
        weights: user sample weights, broadcast to ``loss.shape``.
        denom_weights: per-element weight for the ``"mean"`` denominator beyond
            ``weights`` (e.g. ``class_weights[label]``); ``None`` means 1.
        reduction: one of ``"none"``, ``"sum"``, ``"mean"``, ``"sum_over_batch_size"``.
        base: ``None`` (nats), or the logarithm base.
        out_dtype: dtype of the result (the input's floating dtype).
    """
    check_reduction(reduction)
    dtype = loss.dtype
    w = (
        jnp.ones(loss.shape, dtype)
        if weights is None
        else broadcast_to_elements(weights, loss.shape, "weights", dtype)
    )
    w = jnp.where(present, w, jnp.zeros((), dtype))
    # Absent elements are replaced before the multiply: 0 * inf would be NaN.
    weighted = w * jnp.where(present, loss, jnp.zeros((), dtype))
    scale = log_base_factor(base)
    if reduction == "none":
        out = weighted
    elif reduction == "sum":
        out = jnp.sum(weighted)
    elif reduction == "mean":
        d = w if denom_weights is None else w * denom_weights.astype(dtype)
        out = safe_divide(jnp.sum(weighted), jnp.sum(d))
    else:  # sum_over_batch_size
        count = jnp.sum(present.astype(dtype))
        out = safe_divide(jnp.sum(weighted), count)
    if scale != 1.0:
        out = out * jnp.asarray(scale, dtype)
    return out.astype(out_dtype)


def safe_divide(num: Array, den: Array) -> Array:
    """``num / den``, and exactly 0 (with zero gradient) where ``den == 0``."""
    zero = den == 0
    return jnp.where(zero, jnp.zeros((), num.dtype), num / jnp.where(zero, 1, den))
