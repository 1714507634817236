r"""The one reduction of every loss and closed form: ``R = sum_n c_n L_n``.

Every loss computes a per-element loss ``L_n`` (class weights already applied),
a presence mask and, for ``reduction="mean"``, a per-element denominator weight
``d_n`` (``class_weights[label_n]``; 1 by default). With sample weights ``w_n``
(0 for absent elements) and ``s = 1 / ln(base)`` the reduced loss is

    R = sum_n c_n L_n        ("none": the vector c_n L_n)

with the per-element coefficients

- ``"none"`` and ``"sum"``: ``c_n = s w_n``;
- ``"mean"``: ``c_n = s w_n / sum_m w_m d_m`` (0 when that sum is 0: nothing
  present gives 0 with zero gradient, never NaN);
- ``"sum_over_batch_size"``: ``c_n = s w_n / #present``;
- with a ``normalizer`` ``Z`` (any scalar reduction): ``c_n = s w_n / Z``. Each
  of ``k`` microbatches called with the same ``Z`` (e.g. the total weight of the
  whole batch) then sums to exactly the whole batch's loss and gradient, which a
  ``"mean"`` per microbatch does not.

``c_n`` depends on labels, masks and weights only, never on the first argument
of a loss, so it is also ``dR / dL_n``: a closed form multiplies the analytic
``dL_n / dx`` by it. `Reducer` holds the checked options of one call; the losses
call `Reducer.reduce` and the closed forms `Reducer.coefficients`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._checks import (
    Number,
    broadcast_to_elements,
    check_base,
    check_normalizer,
    check_reduction,
)
from ._math import log_base_factor, safe_divide


@dataclasses.dataclass(frozen=True)
class Reducer:
    """The reduction options of one call, checked (build with `make_reducer`).

    Attributes:
        present: boolean mask of the elements that count (loss shape).
        weights: sample weights broadcast to the loss shape (compute dtype), or
            None (1).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        base: ``None`` (nats) or the logarithm base.
        dtype: the compute dtype.
        out_dtype: the dtype of the result (the input's floating dtype).
        normalizer: the denominator that replaces the reduction's own, or None.
    """

    present: Array
    weights: Array | None
    reduction: str
    base: Number | None
    dtype: jnp.dtype
    out_dtype: jnp.dtype
    normalizer: Array | None = None

    def coefficients(self, denom_weights: Array | None = None) -> Array:
        """``c_n = dR / dL_n`` of the loss shape (0 for absent elements)."""
        present, dtype = self.present, self.dtype
        shape = present.shape
        w = jnp.ones(shape, dtype) if self.weights is None else self.weights
        w = jnp.where(present, w, jnp.zeros((), dtype))
        if self.normalizer is not None:
            w = safe_divide(w, jnp.broadcast_to(self.normalizer, shape))
        elif self.reduction == "mean":
            d = w if denom_weights is None else w * denom_weights.astype(dtype)
            w = safe_divide(w, jnp.broadcast_to(jnp.sum(d), shape))
        elif self.reduction == "sum_over_batch_size":
            count = jnp.sum(present.astype(dtype))
            w = safe_divide(w, jnp.broadcast_to(count, shape))
        scale = log_base_factor(self.base)
        if scale != 1.0:
            w = w * jnp.asarray(scale, dtype)
        return w

    def reduce(self, loss: Array, denom_weights: Array | None = None) -> Array:
        """``sum_n c_n L_n`` (``"none"``: ``c_n L_n``) in the output dtype.

        Absent elements are replaced by 0 before the product (``0 * inf`` would
        be NaN), so their loss may be anything.
        """
        coef = self.coefficients(denom_weights)
        zero = jnp.zeros((), loss.dtype)
        out = coef * jnp.where(self.present, loss, zero)
        if self.reduction != "none":
            out = jnp.sum(out)
        return out.astype(self.out_dtype)


def make_reducer(
    present: Array,
    dtype,
    out_dtype,
    *,
    weights: ArrayLike | None,
    reduction: str,
    base: Number | None,
    normalizer: ArrayLike | None = None,
) -> Reducer:
    """Check ``reduction``, ``base``, ``weights`` and ``normalizer`` (trace
    time); bundle them.

    ``dtype`` is the compute dtype and ``out_dtype`` that of the result.
    """
    check_reduction(reduction)
    check_base(base)
    if weights is not None:
        weights = broadcast_to_elements(weights, present.shape, "weights", dtype)
    check_normalizer(normalizer, reduction)
    if normalizer is not None:
        normalizer = jnp.asarray(normalizer, dtype)
    return Reducer(
        present, weights, reduction, base, jnp.dtype(dtype), out_dtype, normalizer
    )
