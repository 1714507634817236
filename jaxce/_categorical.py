"""The categorical core shared by the softmax (logit) and probability losses.

Given log-probabilities ``logp`` along the last axis, the per-element loss with
class weights ``w`` and (possibly smoothed) targets ``t`` is

    L = -sum_c w_c t_c logp_c

and the weight the element carries in ``reduction="mean"`` is
``sum_c w_c t_c`` with the *unsmoothed* targets (``w[label]`` for integer labels),
which is PyTorch's weighted-mean denominator.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._options import (
    check_class_weights,
    check_integer_labels,
    check_label_smoothing,
    element_mask,
    is_static_zero,
    normalize_axis,
    safe_xlogy,
    split_where,
)


class Classes:
    """Inputs moved to the last axis, with the class mask and presence resolved."""

    def __init__(self, x: Array, axis: int, where, name: str, dtype):
        axis = normalize_axis(axis, x.ndim, name)
        self.x = jnp.moveaxis(x, axis, -1).astype(dtype)
        self.axis = axis
        self.num_classes = self.x.shape[-1]
        self.element_shape = self.x.shape[:-1]
        class_mask, element_where = split_where(where, x.ndim, axis)
        self.present = element_mask(element_where, self.element_shape)
        if class_mask is not None:
            try:
                class_mask = jnp.broadcast_to(class_mask, self.x.shape)
            except ValueError:
                raise ValueError(
                    f"`where` of shape {jnp.shape(where)} has as many dimensions as "
                    f"`{name}` {x.shape}, so it is a per-class mask, but it does not "
                    f"broadcast to `{name}`."
                ) from None
            self.present = self.present & jnp.any(class_mask, axis=-1)
            self.count = jnp.sum(class_mask, axis=-1).astype(dtype)
        else:
            self.count = None
        self.class_mask = class_mask
        self.bad_label = None
        # Statically known "every row present": keep() can skip a full-size select.
        self.may_be_absent = element_where is not None or class_mask is not None
        self.dtype = dtype

    def k(self) -> Array | int:
        """Number of classes in play per element (label smoothing's K)."""
        return self.num_classes if self.count is None else self.count

    def check_targets(self, targets: Array, name: str = "targets") -> Array:
        if targets.ndim != self.x.ndim:
            hint = (
                " For integer class labels use the sparse_* loss."
                if targets.ndim == self.x.ndim - 1
                else ""
            )
            raise ValueError(
                f"`{name}` must have the shape of the input "
                f"{jnp.moveaxis(self.x, -1, self.axis).shape}, got {targets.shape}."
                + hint
            )
        t = jnp.moveaxis(targets, self.axis, -1)
        if t.shape != self.x.shape:
            raise ValueError(
                f"`{name}` must have the shape of the input, got {targets.shape} for "
                f"input of shape {jnp.moveaxis(self.x, -1, self.axis).shape}."
            )
        return t.astype(self.dtype)

    def check_labels(
        self, labels: Array, ignore_index: int | np.integer | None
    ) -> Array:
        check_integer_labels(labels)
        if labels.shape != self.element_shape:
            raise ValueError(
                f"`labels` must have the input's shape without the class axis "
                f"{self.element_shape}, got {labels.shape}."
            )
        if ignore_index is not None:
            if not isinstance(ignore_index, numbers.Integral) or isinstance(
                ignore_index, bool
            ):
                raise TypeError(f"`ignore_index` must be an int, got {ignore_index!r}.")
            self.present = self.present & (labels != int(ignore_index))
            self.may_be_absent = True
        in_range = (labels >= 0) & (labels < self.num_classes)
        self.bad_label = self.present & ~in_range
        return jnp.where(self.present & in_range, labels, 0)

    def poison_bad_labels(self, values: Array) -> Array:
        """NaN where a present label is outside ``[0, K)``: never a wrapped class.

        Multiplying (rather than selecting) makes the value *and* the gradient of
        such an element NaN, in autodiff and in the closed forms alike. Use
        `jaxce.validate` for a clear error instead.
        """
        if self.bad_label is None:
            return values
        bad = self.bad_label
        while bad.ndim < values.ndim:
            bad = bad[..., None]
        nan = jnp.asarray(jnp.nan, values.dtype)
        return values * jnp.where(bad, nan, jnp.ones((), values.dtype))

    def class_weights(self, class_weights) -> Array | None:
        return check_class_weights(class_weights, self.num_classes, self.dtype)

    def keep(self, values: Array, fill) -> Array:
        """Masked classes become ``fill``; absent rows become 0 (finite gradients)."""
        if self.class_mask is not None:
            values = jnp.where(self.class_mask, values, fill)
        if not self.may_be_absent:
            return values
        return jnp.where(self.present[..., None], values, jnp.zeros((), values.dtype))

    def smooth(self, t: Array, label_smoothing) -> Array:
        """``(1 - eps) * t + eps / K`` on the classes in play."""
        check_label_smoothing(label_smoothing)
        if is_static_zero(label_smoothing):
            return t
        eps = jnp.asarray(label_smoothing, self.dtype)
        k = self.k()
        uniform = jnp.asarray(1, self.dtype) / jnp.asarray(k, self.dtype)
        uniform = jnp.broadcast_to(jnp.expand_dims(uniform, -1), t.shape)
        if self.class_mask is not None:
            uniform = jnp.where(self.class_mask, uniform, jnp.zeros((), self.dtype))
        return (1 - eps) * t + eps * uniform


def dense_loss(logp: Array, t: Array, t_raw: Array, cw: Array | None, classes):
    """Per-element ``-sum_c w_c t_c logp_c`` and its mean-denominator weight."""
    wt = t if cw is None else t * jnp.broadcast_to(cw, t.shape)
    if classes.class_mask is not None:
        wt = jnp.where(classes.class_mask, wt, jnp.zeros((), wt.dtype))
        t_raw = jnp.where(classes.class_mask, t_raw, jnp.zeros((), t_raw.dtype))
    loss = -jnp.sum(safe_xlogy(wt, logp), axis=-1)
    denom = (
        None
        if cw is None
        else jnp.sum(t_raw * jnp.broadcast_to(cw, t_raw.shape), axis=-1)
    )
    return loss, denom


def sparse_loss(
    logp_y: Array,
    sum_logp: Array | None,
    cw: Array | None,
    safe_labels: Array,
    label_smoothing,
    classes: Classes,
):
    """Per-element loss for integer labels, written without a one-hot.

    ``logp_y`` is the target log-probability; ``sum_logp`` is
    ``sum_c w_c logp_c`` over classes in play (only needed with smoothing).
    """
    check_label_smoothing(label_smoothing)
    w_y = None if cw is None else cw[safe_labels]
    nll = -logp_y if w_y is None else -w_y * logp_y
    if sum_logp is not None:
        eps = jnp.asarray(label_smoothing, classes.dtype)
        k = jnp.asarray(classes.k(), classes.dtype)
        nll = (1 - eps) * nll - eps / k * sum_logp
    return nll, w_y


def class_sum(values: Array, cw: Array | None, classes: Classes) -> Array:
    """``sum_c w_c values_c`` over the classes in play."""
    wv = values if cw is None else values * jnp.broadcast_to(cw, values.shape)
    if classes.class_mask is not None:
        wv = jnp.where(classes.class_mask, wv, jnp.zeros((), wv.dtype))
    return jnp.sum(wv, axis=-1)
