"""The elementwise preparation shared by the binary and sigmoid focal losses.

`prepare_elementwise` checks and normalises one call's input, labels (0/1 or
soft, optionally smoothed towards 0.5), presence mask and reduction options into
a frozen `Elementwise`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._checks import (
    Number,
    as_float_input,
    broadcast_to_elements,
    check_label_smoothing,
    check_same_shape,
    compute_dtype,
    element_mask,
    is_static_zero,
)
from ._reduction import Reducer, make_reducer


@dataclasses.dataclass(frozen=True)
class Elementwise:
    """One call's elementwise input, checked (build with `prepare_elementwise`).

    Attributes:
        x: the input (logits or probabilities) in the compute dtype.
        y: the labels in the compute dtype, smoothed to ``(1 - e) y + e / 2``.
        reducer: the reduction options, presence included.
    """

    x: Array
    y: Array
    reducer: Reducer

    @property
    def dtype(self) -> jnp.dtype:
        return self.reducer.dtype

    def per_element(self, value: ArrayLike, name: str) -> Array:
        """A per-element option (``pos_weight``) broadcast to ``x``."""
        return broadcast_to_elements(value, self.x.shape, name, self.dtype)

    def reduce(self, loss: Array) -> Array:
        return self.reducer.reduce(loss)

    def gradient(self, grad: Array) -> Array:
        """``c_n dL_n/dx_n`` in the output dtype; 0 where absent."""
        coef = self.reducer.coefficients()
        out = jnp.where(self.reducer.present, coef * grad, jnp.zeros((), grad.dtype))
        return out.astype(self.reducer.out_dtype)


def prepare_elementwise(
    x: ArrayLike,
    labels: ArrayLike,
    *,
    name: str,
    label_smoothing: object,
    where,
    weights: ArrayLike | None,
    reduction: str,
    base: Number | None,
    normalizer: ArrayLike | None = None,
) -> Elementwise:
    """Check every shared argument of an elementwise loss (trace time)."""
    x = as_float_input(x, name)
    y = as_float_input(labels, "labels")
    check_same_shape(x, y, name, "labels")
    check_label_smoothing(label_smoothing)
    dtype = compute_dtype(x.dtype, y.dtype)
    present = element_mask(where, x.shape)
    y = y.astype(dtype)
    if not is_static_zero(label_smoothing):
        eps = jnp.asarray(label_smoothing, dtype)
        y = y * (1 - eps) + eps / 2
    reducer = make_reducer(
        present,
        dtype,
        x.dtype,
        weights=weights,
        reduction=reduction,
        base=base,
        normalizer=normalizer,
    )
    return Elementwise(x.astype(dtype), y, reducer)
