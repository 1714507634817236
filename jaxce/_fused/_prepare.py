"""Argument checks and normalisation of the fused linear -> cross-entropy.

`prepare` runs every shape / dtype / value check of the public function (trace
time) and returns a frozen `Prepared`; every path (token, recompute,
vocabulary-parallel, closed form) starts from it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._core import (
    Reducer,
    as_float_input,
    check_class_weights,
    check_ignore_index,
    check_integer_labels,
    check_label_smoothing,
    check_nonneg,
    check_positive_int,
    check_reduction,
    compute_dtype,
    element_mask,
    is_static_zero,
    make_reducer,
    out_of_range,
)
from ._blocks import Operands, Static, block_sizes


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One call's arguments, checked (build with `prepare`).

    Attributes:
        hidden: ``(N, D)`` floating input.
        weight: ``(V, D)``, the dtype of ``hidden``.
        bias: ``(V,)`` or None.
        labels: ``(N,)`` default-int labels, absent and out-of-range tokens set
            to 0 (safe to index with).
        invalid: present tokens whose label is outside ``[0, V)`` (NaN loss).
        class_weights: ``(V,)`` in the compute dtype, or None.
        label_smoothing, z_loss: the checked hyperparameters (numbers or traced
            scalars).
        softcap: ``c`` of ``c * tanh(z / c)`` (a float) or None.
        chunk_size: the requested classes per block (None: the default).
        reducer: the reduction (a `Reducer`, presence included) in the
            compute dtype, returning the dtype of ``hidden``.
    """

    hidden: Array
    weight: Array
    bias: Array | None
    labels: Array
    invalid: Array
    class_weights: Array | None
    label_smoothing: object
    z_loss: object
    softcap: float | None
    chunk_size: int | None
    reducer: Reducer

    @property
    def present(self) -> Array:
        return self.reducer.present

    @property
    def reduction(self) -> str:
        return self.reducer.reduction

    @property
    def dtype(self) -> jnp.dtype:
        """The compute dtype."""
        return self.reducer.dtype

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def need_sum(self) -> bool:
        """False when ``label_smoothing`` is statically 0 (``sum_wz`` skipped)."""
        return not is_static_zero(self.label_smoothing)

    def eps(self) -> Array | None:
        """Label smoothing as a compute-dtype scalar (None when statically 0)."""
        return jnp.asarray(self.label_smoothing, self.dtype) if self.need_sum else None

    def lam(self) -> Array | None:
        """The z-loss weight as a compute-dtype scalar (None when statically 0)."""
        if is_static_zero(self.z_loss):
            return None
        return jnp.asarray(self.z_loss, self.dtype)

    def operands(self) -> Operands:
        return Operands(
            self.hidden, self.weight, self.bias, self.labels, self.class_weights
        )

    def static(self, n: int | None = None, v: int | None = None) -> Static:
        """The static configuration for ``n`` tokens and ``v`` classes per device.

        Defaults: all tokens and classes (one device).
        """
        n = self.hidden.shape[0] if n is None else n
        v = self.num_classes if v is None else v
        return Static(
            softcap=self.softcap,
            blocks=block_sizes(n, v, self.chunk_size),
            need_sum=self.need_sum,
            reduction=self.reduction,
        )


def _check_2d(x: Array, name: str, dims: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D {dims}, got shape {x.shape}.")


def _check_softcap(softcap: object) -> float | None:
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"`softcap` must be None or a number, got {softcap!r}.")
    if not softcap > 0:
        raise ValueError(f"`softcap` must be > 0, got {softcap!r}.")
    return float(softcap)


def prepare(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None,
    class_weights: ArrayLike | None,
    ignore_index: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    where: ArrayLike | None,
    reduction: str,
    chunk_size: object,
) -> Prepared:
    """Check the public arguments (trace time) and normalise them."""
    hidden = as_float_input(hidden, "hidden")
    weight = as_float_input(weight, "weight")
    labels = jnp.asarray(labels)
    _check_2d(hidden, "hidden", "(tokens, features)")
    _check_2d(weight, "weight", "(vocab, features) like nn.Linear")
    (n, d), v = hidden.shape, weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(
            f"`weight` {weight.shape} must be (vocab, features) with the features of "
            f"`hidden` {hidden.shape}: got {weight.shape[1]} != {d}."
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
    dtype = compute_dtype(hidden.dtype)
    if bias is not None:
        bias = as_float_input(bias, "bias")
        if bias.shape != (v,):
            raise ValueError(f"`bias` must have shape ({v},), got {bias.shape}.")
    cw = check_class_weights(class_weights, v, dtype)
    check_label_smoothing(label_smoothing)
    check_nonneg(z_loss, "z_loss")
    check_reduction(reduction)
    softcap = _check_softcap(softcap)
    chunk = check_positive_int(chunk_size, "chunk_size")
    if where is not None and jnp.shape(where) != (n,):
        raise ValueError(
            f"`where` must be a per-token mask of shape ({n},), got {jnp.shape(where)}."
        )
    present = element_mask(where, (n,))
    ignore = check_ignore_index(ignore_index)
    if ignore is not None:
        present = present & (labels != ignore)
    reducer = make_reducer(
        present, dtype, hidden.dtype, weights=None, reduction=reduction, base=None
    )
    invalid = present & out_of_range(labels, v)
    # The default int dtype: the kernels compare labels with jnp.arange indices.
    int_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
    labels = jnp.where(present & ~invalid, labels, 0).astype(int_dtype)
    return Prepared(
        hidden=hidden,
        weight=weight,
        bias=bias,
        labels=labels,
        invalid=invalid,
        class_weights=cw,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        chunk_size=chunk,
        reducer=reducer,
    )
