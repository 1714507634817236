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
    check_label_smoothing,
    check_nonneg,
    check_reduction,
    compute_dtype,
    is_static_zero,
    make_reducer,
    out_of_range,
)
from ._block_sizes import block_sizes, check_budget, check_chunk_size
from ._blocks import Operands, Static, class_axis
from ._head import check_head


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One call's arguments, checked (build with `prepare`).

    Attributes:
        hidden: ``(N, D)`` floating input.
        weight: ``(V, D)`` (``weight_layout="vd"``) or ``(D, V)`` (``"dv"``),
            the dtype of ``hidden``.
        bias: ``(V,)`` or None.
        labels: ``(N,)`` default-int labels, absent and out-of-range tokens set
            to 0 (safe to index with).
        invalid: present tokens whose label is outside ``[0, V)`` (NaN loss).
        class_weights: ``(V,)`` in the compute dtype, or None.
        label_smoothing, z_loss: the checked hyperparameters (numbers or traced
            scalars).
        softcap: ``c`` of ``c * tanh(z / c)`` (a float) or None.
        chunk_size: the requested classes per block (None: the default,
            ``"auto"``: from the budget).
        reducer: the reduction (a `Reducer`, presence included) in the
            compute dtype, returning the dtype of ``hidden``.
        weight_layout: ``"vd"`` or ``"dv"``.
        budget: the logits-block element budget (None: `BLOCK_ELEMENTS`).
        order: with ``compact=True`` on one device, the permutation that
            packed the tokens (present first, in their order): the per-token
            fields above are ``x[order]``; None otherwise.
        num_present: with ``compact=True`` on one device, the number of
            present tokens (traced); None otherwise.
        compact: ``compact=True`` was asked for (block sizes fine enough to
            skip; on a mesh each device packs its rows: `._vocab_parallel`).
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
    chunk_size: int | str | None
    reducer: Reducer
    weight_layout: str = "vd"
    budget: int | None = None
    order: Array | None = None
    num_present: Array | None = None
    compact: bool = False

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
        return self.weight.shape[class_axis(self.weight_layout)]

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
            self.hidden,
            self.weight,
            self.bias,
            self.labels,
            self.class_weights,
            self.num_present,
        )

    def unpack(self, x: Array) -> Array:
        """Per-token ``x`` (packed order) back in the caller's token order."""
        return x if self.order is None else unpack(x, self.order)

    def static(self, n: int | None = None, v: int | None = None) -> Static:
        """The static configuration for ``n`` tokens and ``v`` classes per device.

        Defaults: all tokens and classes (one device).
        """
        n = self.hidden.shape[0] if n is None else n
        v = self.num_classes if v is None else v
        return Static(
            softcap=self.softcap,
            blocks=block_sizes(n, v, self.chunk_size, self.budget, self.compact),
            need_sum=self.need_sum,
            reduction=self.reduction,
            weight_layout=self.weight_layout,
        )


def packing_order(present: Array) -> Array:
    """The permutation that puts the present tokens first, each group in its
    order (a stable sort of a 0/1 key)."""
    return jnp.argsort((~present).astype(jnp.int8), stable=True)


def unpack(x: Array, order: Array) -> Array:
    """``x`` of tokens permuted by ``order`` (`packing_order`) back in order."""
    return jnp.zeros_like(x).at[order].set(x, unique_indices=True)


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
    weights: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    weight_layout: object = "vd",
    memory_budget_bytes: object = None,
    compact: object = False,
    pack: bool = True,
) -> Prepared:
    """Check the public arguments (trace time) and normalise them.

    ``compact=True`` packs the present tokens to the front (`Prepared.order`)
    unless ``pack`` is False (on a mesh each device packs its own rows).
    """
    head = check_head(hidden, weight, labels, bias, where, weight_layout)
    hidden, weight, labels, bias = head.hidden, head.weight, head.labels, head.bias
    weight_layout, n, v = head.weight_layout, head.num_tokens, head.num_classes
    dtype = compute_dtype(hidden.dtype)
    cw = check_class_weights(class_weights, v, dtype)
    check_label_smoothing(label_smoothing)
    check_nonneg(z_loss, "z_loss")
    check_reduction(reduction)
    softcap = _check_softcap(softcap)
    chunk = check_chunk_size(chunk_size)
    budget = check_budget(memory_budget_bytes, dtype)
    present = head.present
    ignore = check_ignore_index(ignore_index)
    if ignore is not None:
        present = present & (labels != ignore)
    if weights is not None:
        weights = as_float_input(weights, "weights")
        if weights.shape not in ((), (n,)):
            raise ValueError(
                f"`weights` must be per-token sample weights of shape ({n},), got "
                f"{weights.shape}."
            )
    if not isinstance(compact, bool):
        raise TypeError(f"`compact` must be True or False, got {compact!r}.")
    order = count = None
    if compact and pack:  # present tokens first, in order
        order = packing_order(present)
        hidden, labels, present = hidden[order], labels[order], present[order]
        if weights is not None and weights.ndim:
            weights = weights[order]
        count = jnp.sum(present, dtype=jnp.int32)
    reducer = make_reducer(
        present,
        dtype,
        hidden.dtype,
        weights=weights,
        reduction=reduction,
        base=None,
        normalizer=normalizer,
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
        weight_layout=weight_layout,
        budget=budget,
        order=order,
        num_present=count,
        compact=compact,
    )
