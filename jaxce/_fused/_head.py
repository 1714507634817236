"""The checks every fused head shares: ``hidden``, ``weight``, ``labels``,
``bias`` and a per-token ``where``, in either weight layout.

`check_head` is the one place the fused cross-entropy and the per-token
statistics read these arguments (trace time); a bad one raises ``ValueError`` /
``TypeError`` naming it and the shapes involved.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._core import as_float_input, check_integer_labels, element_mask
from ._weight_layout import WEIGHT_LAYOUTS, class_axis, num_classes


class Head(NamedTuple):
    """Checked head arguments: ``hidden (N, D)``, ``weight`` in its layout,
    ``labels (N,)`` as given, ``bias (V,)`` or None, ``present (N,)``."""

    hidden: Array
    weight: Array
    labels: Array
    bias: Array | None
    present: Array
    weight_layout: str

    @property
    def num_tokens(self) -> int:
        return self.hidden.shape[0]

    @property
    def num_classes(self) -> int:
        return num_classes(self.weight, self.weight_layout)


def check_weight_layout(weight_layout: object) -> str:
    if not isinstance(weight_layout, str) or weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(
            f'`weight_layout` must be "vd" (weight (vocab, features), nn.Linear) or '
            f'"dv" (weight (features, vocab), a Flax kernel), got {weight_layout!r}.'
        )
    return weight_layout


def _check_2d(x: Array, name: str, dims: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D {dims}, got shape {x.shape}.")


def check_head(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    bias: ArrayLike | None,
    where: ArrayLike | None,
    weight_layout: object,
) -> Head:
    """Check the arguments of a fused head (trace time)."""
    layout = check_weight_layout(weight_layout)
    hidden = as_float_input(hidden, "hidden")
    weight = as_float_input(weight, "weight")
    labels = jnp.asarray(labels)
    dims = "(vocab, features)" if layout == "vd" else "(features, vocab)"
    _check_2d(hidden, "hidden", "(tokens, features)")
    _check_2d(weight, "weight", f"{dims} (weight_layout={layout!r})")
    ax = class_axis(layout)
    (n, d), v = hidden.shape, weight.shape[ax]
    if weight.shape[1 - ax] != d:
        raise ValueError(
            f"`weight` {weight.shape} must be {dims} (weight_layout={layout!r}) with "
            f"the features of `hidden` {hidden.shape}: got {weight.shape[1 - ax]} "
            f"!= {d}."
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(
            f"`hidden` and `weight` must have the same dtype, got {hidden.dtype} and "
            f"{weight.dtype}; cast one of them."
        )
    check_integer_labels(labels)
    if labels.shape != (n,):
        raise ValueError(
            f"`labels` must have shape ({n},) (one per row of `hidden`), got "
            f"{labels.shape}."
        )
    if bias is not None:
        bias = as_float_input(bias, "bias")
        if bias.shape != (v,):
            raise ValueError(f"`bias` must have shape ({v},), got {bias.shape}.")
    if where is not None and jnp.shape(where) != (n,):
        raise ValueError(
            f"`where` must be a per-token mask of shape ({n},), got {jnp.shape(where)}."
        )
    return Head(hidden, weight, labels, bias, element_mask(where, (n,)), layout)
