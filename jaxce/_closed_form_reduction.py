"""The gradient of :func:`jaxce._options.reduce_loss`, shared by every closed form.

Every loss is ``R = s * reduce(w_n * present_n * L_n)`` with ``s = 1 / log(base)``.
Its derivative with respect to the per-element loss ``L_n`` is a per-element
coefficient ``c_n`` that does not depend on the first argument of the loss:

- ``"none"`` (gradient of the sum) and ``"sum"``: ``c_n = s * w_n * present_n``;
- ``"mean"``: ``c_n = s * w_n * present_n / sum_m w_m d_m present_m`` with ``d_m``
  the mean-denominator weight (``class_weights[label_m]``, or 1); ``c = 0`` when
  the denominator is 0 (nothing present), as ``reduce_loss`` returns 0 there;
- ``"sum_over_batch_size"``: ``c_n = s * w_n * present_n / sum_m present_m``.

A closed form computes ``dL_n / dx`` analytically and multiplies by ``c_n``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ._categorical import Classes
from ._options import (
    broadcast_to_elements,
    check_label_smoothing,
    check_reduction,
    is_static_zero,
    log_base_factor,
    safe_divide,
)


def reduction_coefficients(
    present: Array,
    *,
    weights,
    denom_weights: Array | None = None,
    reduction: str,
    base,
    dtype,
) -> Array:
    """``c_n = d reduce_loss / d L_n``, of the per-element loss shape."""
    check_reduction(reduction)
    shape = present.shape
    w = (
        jnp.ones(shape, dtype)
        if weights is None
        else broadcast_to_elements(weights, shape, "weights", dtype)
    )
    w = jnp.where(present, w, jnp.zeros((), dtype))
    if reduction == "mean":
        d = w if denom_weights is None else w * denom_weights.astype(dtype)
        w = safe_divide(w, jnp.broadcast_to(jnp.sum(d), shape))
    elif reduction == "sum_over_batch_size":
        count = jnp.sum(present.astype(dtype))
        w = safe_divide(w, jnp.broadcast_to(count, shape))
    scale = log_base_factor(base)
    if scale != 1.0:
        w = w * jnp.asarray(scale, dtype)
    return w


def finish_elementwise(grad: Array, coef: Array, present: Array, out_dtype) -> Array:
    """``c_n * dL_n/dx_n`` for elementwise (binary) losses; 0 where absent."""
    out = jnp.where(present, coef * grad, jnp.zeros((), grad.dtype))
    return out.astype(out_dtype)


def finish_classes(grad: Array, coef: Array, classes: Classes, out_dtype) -> Array:
    """``c_n * dL_n/dx_nc`` with the class axis put back; 0 in absent rows.

    Rows whose label is outside ``[0, K)`` are NaN, as in autodiff of the loss.
    """
    grad = classes.poison_bad_labels(grad)
    out = jnp.where(
        classes.present[..., None], coef[..., None] * grad, jnp.zeros((), grad.dtype)
    )
    return jnp.moveaxis(out, -1, classes.axis).astype(out_dtype)


def clip_derivative(x: Array, lo: float, hi: float) -> Array:
    """Derivative of ``jnp.clip(x, lo, hi)``: 1 inside, 0 outside, 1/2 on a bound.

    The 1/2 on the bounds is JAX's convention for ``maximum``/``minimum`` ties (the
    midpoint of the one-sided derivatives), so closed forms match autodiff exactly.
    """
    one = jnp.ones((), x.dtype)
    half = jnp.asarray(0.5, x.dtype)
    zero = jnp.zeros((), x.dtype)
    inside = jnp.where((x > lo) & (x < hi), one, zero)
    return jnp.where((x == lo) | (x == hi), half, inside)


def weighted_classes(t: Array, cw: Array | None, classes: Classes) -> Array:
    """``w_c t_c`` on the classes in play (0 on classes a per-class mask drops)."""
    wt = t if cw is None else t * jnp.broadcast_to(cw, t.shape)
    if classes.class_mask is not None:
        wt = jnp.where(classes.class_mask, wt, jnp.zeros((), wt.dtype))
    return wt


def sparse_targets(
    safe_labels: Array,
    cw: Array | None,
    label_smoothing,
    classes: Classes,
) -> tuple[Array, Array | None, Array, Array | None]:
    """The weighted smoothed target ``a_c = on [c = y] + off_c`` of integer labels.

    Every integer-label categorical loss is ``-sum_c a_c log p_c`` with
    ``on = (1 - e) w_y`` and ``off_c = e / K * w_c * m_c`` (``m``: classes in play).
    Returns ``(on, off, total, w_y)``: ``on`` and ``total = sum_c a_c`` of the
    element shape, ``off`` broadcastable to the classes-last input (``None``
    without smoothing), and the mean-denominator weight ``w_y`` (``None`` without
    class weights). Nothing of the full input's size is reduced unless a per-class
    mask is given.
    """
    check_label_smoothing(label_smoothing)
    dtype = classes.dtype
    w_y = None if cw is None else cw[safe_labels]
    on = jnp.ones(safe_labels.shape, dtype) if w_y is None else w_y
    if is_static_zero(label_smoothing):
        return on, None, on, w_y
    eps = jnp.asarray(label_smoothing, dtype)
    on = (1 - eps) * on
    ek = eps / jnp.asarray(classes.k(), dtype)  # scalar, or per element with a mask
    if classes.class_mask is None:
        off = ek if cw is None else jnp.broadcast_to(ek * cw, classes.x.shape)
        off_sum = eps if cw is None else ek * jnp.sum(cw)
    else:
        wm = weighted_classes(jnp.ones(classes.x.shape, dtype), cw, classes)
        off = wm * ek[..., None]
        off_sum = (
            eps * jnp.ones(safe_labels.shape, dtype)
            if cw is None
            else (ek * jnp.sum(wm, axis=-1))
        )
    return on, off, on + off_sum, w_y


def dense_sparse_targets(on: Array, off: Array | None, hit: Array) -> Array:
    """``a_c = on [c = y] + off_c`` as a classes-last array."""
    a = jnp.where(hit, on[..., None], jnp.zeros((), on.dtype))
    return a if off is None else a + off


def is_label(safe_labels: Array, classes: Classes) -> Array:
    """Boolean one-hot of the labels (classes last), without a float one-hot."""
    iota = lax.broadcasted_iota(safe_labels.dtype, classes.x.shape, classes.x.ndim - 1)
    return iota == safe_labels[..., None]
