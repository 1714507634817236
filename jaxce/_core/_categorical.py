r"""The categorical preparation shared by the softmax and probability losses.

`prepare_categorical` checks and normalises the arguments of one call into a
frozen `Categorical`: the input with its classes moved last, the class mask of a
per-class ``where``, presence (element ``where``, a class mask that removes every
class, ``ignore_index``), integer labels made safe to index with (absent and
out-of-range ones set to 0) or the targets, class weights, label smoothing and
the `Reducer`. Everything is decided at construction; nothing mutates later.

With log-probabilities ``logp`` along the last axis, class weights ``w`` and
(possibly smoothed) targets ``t``, every categorical loss is

    L = -sum_c w_c t_c logp_c

and an element weighs ``sum_c w_c t_c`` (the *unsmoothed* targets;
``w[label]`` for integer labels) in ``reduction="mean"``: PyTorch's weighted
mean. Integer labels give the target ``a_c = (1 - eps) w_y [c = y] +
eps / K w_c m_c`` (``m``: classes in play) without a one-hot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike

from ._checks import (
    Number,
    as_float_input,
    check_bool_mask,
    check_class_weights,
    check_ignore_index,
    check_integer_labels,
    check_label_smoothing,
    compute_dtype,
    element_mask,
    is_static_zero,
    normalize_axis,
)
from ._math import nan_where, out_of_range, safe_xlogy
from ._reduction import Reducer, make_reducer
from ._sharding import explicitly_sharded


@dataclasses.dataclass(frozen=True)
class Categorical:
    """One call's categorical input, checked (build with `prepare_categorical`).

    Attributes:
        x: the input with classes last, in the compute dtype.
        axis: the (non-negative) class axis of the original input.
        class_mask: boolean, ``x``'s shape: classes in play (None: all).
        count: classes in play per element (None without a class mask).
        may_be_absent: False when every element is statically present.
        labels: integer labels with absent / out-of-range ones set to 0 (sparse).
        bad_label: present elements whose label is outside ``[0, K)`` (sparse).
        targets: classes-last targets in the compute dtype (dense).
        class_weights: ``(K,)`` in the compute dtype, or None.
        label_smoothing: the checked smoothing (a number or a traced scalar).
        reducer: the reduction options (`Reducer`), presence included.
        sharded: the input or the labels are split over an Explicit mesh axis
            (label lookups are then masked sums, not gathers).
    """

    x: Array
    axis: int
    class_mask: Array | None
    count: Array | None
    may_be_absent: bool
    labels: Array | None
    bad_label: Array | None
    targets: Array | None
    class_weights: Array | None
    label_smoothing: object
    reducer: Reducer
    sharded: bool = False

    @property
    def dtype(self) -> jnp.dtype:
        return self.reducer.dtype

    @property
    def present(self) -> Array:
        return self.reducer.present

    @property
    def num_classes(self) -> int:
        return self.x.shape[-1]

    @property
    def smoothing(self) -> bool:
        """False when ``label_smoothing`` is statically 0 (its work is skipped)."""
        return not is_static_zero(self.label_smoothing)

    def k(self) -> Array | int:
        """Number of classes in play per element (label smoothing's K)."""
        return self.num_classes if self.count is None else self.count

    def keep(self, values: Array, fill) -> Array:
        """Masked classes become ``fill``; absent rows become 0 (finite gradients)."""
        if self.class_mask is not None:
            values = jnp.where(self.class_mask, values, fill)
        if not self.may_be_absent:
            return values
        return jnp.where(self.present[..., None], values, jnp.zeros((), values.dtype))

    def weighted(self, values: Array) -> Array:
        """``w_c values_c`` on the classes in play (0 on masked classes)."""
        cw = self.class_weights
        wv = values if cw is None else values * jnp.broadcast_to(cw, values.shape)
        if self.class_mask is not None:
            wv = jnp.where(self.class_mask, wv, jnp.zeros((), wv.dtype))
        return wv

    def class_sum(self, values: Array) -> Array:
        """``sum_c w_c values_c`` over the classes in play."""
        return jnp.sum(self.weighted(values), axis=-1)

    def smooth(self, t: Array) -> Array:
        """``(1 - eps) * t + eps / K`` on the classes in play."""
        if not self.smoothing:
            return t
        eps = jnp.asarray(self.label_smoothing, self.dtype)
        uniform = jnp.asarray(1, self.dtype) / jnp.asarray(self.k(), self.dtype)
        uniform = jnp.broadcast_to(jnp.expand_dims(uniform, -1), t.shape)
        if self.class_mask is not None:
            uniform = jnp.where(self.class_mask, uniform, jnp.zeros((), self.dtype))
        return (1 - eps) * t + eps * uniform

    def take(self, values: Array) -> Array:
        """``values[..., label]`` (classes last) for integer labels.

        A gather; on Explicit-axis sharded input (see `explicitly_sharded`) a
        masked sum over the classes, which every sharding can type.
        """
        assert self.labels is not None
        if self.sharded:
            zero = jnp.zeros((), values.dtype)
            return jnp.sum(jnp.where(self.is_label(), values, zero), axis=-1)
        return jnp.take_along_axis(values, self.labels[..., None], axis=-1)[..., 0]

    def per_label(self, per_class: Array) -> Array:
        """``per_class[label]`` for a ``(K,)`` vector (class weights, ``alpha``)."""
        return self.take(jnp.broadcast_to(per_class, self.x.shape))

    def is_label(self) -> Array:
        """Boolean one-hot of the labels (classes last), without a float one-hot."""
        assert self.labels is not None
        iota = lax.broadcasted_iota(self.labels.dtype, self.x.shape, self.x.ndim - 1)
        return iota == self.labels[..., None]

    def label_weights(self) -> Array | None:
        """``class_weights[label]``: the ``"mean"`` weight of integer labels."""
        if self.class_weights is None:
            return None
        return self.per_label(self.class_weights)

    def dense_nll(self, logp: Array) -> tuple[Array, Array | None]:
        """``-sum_c w_c t~_c logp_c`` and its ``"mean"`` weight ``sum_c w_c t_c``."""
        assert self.targets is not None
        loss = -jnp.sum(safe_xlogy(self.weighted(self.smooth(self.targets)), logp), -1)
        denom = None if self.class_weights is None else self.class_sum(self.targets)
        return loss, denom

    def sparse_nll(
        self, logp_y: Array, logp: Callable[[], Array]
    ) -> tuple[Array, Array | None]:
        """``-(1 - eps) w_y logp_y - eps / K sum_c w_c logp_c`` and ``w_y``.

        ``logp()`` (all log-probabilities, classes last) is only evaluated with
        label smoothing.
        """
        w_y = self.label_weights()
        nll = -logp_y if w_y is None else -w_y * logp_y
        if self.smoothing:
            eps = jnp.asarray(self.label_smoothing, self.dtype)
            k = jnp.asarray(self.k(), self.dtype)
            nll = (1 - eps) * nll - eps / k * self.class_sum(logp())
        return nll, w_y

    def sparse_targets(self) -> tuple[Array, Array | None, Array]:
        """The weighted smoothed target ``a_c = on [c = y] + off_c`` of labels.

        Returns ``(on, off, total)``: ``on = (1 - eps) w_y`` and
        ``total = sum_c a_c`` of the element shape, and ``off_c = eps / K w_c
        m_c`` broadcastable to ``x`` (None without smoothing). Nothing of the
        input's size is reduced unless a per-class mask is given.
        """
        assert self.labels is not None
        dtype, cw = self.dtype, self.class_weights
        w_y = self.label_weights()
        on = jnp.ones(self.labels.shape, dtype) if w_y is None else w_y
        if not self.smoothing:
            return on, None, on
        eps = jnp.asarray(self.label_smoothing, dtype)
        on = (1 - eps) * on
        ek = eps / jnp.asarray(self.k(), dtype)  # scalar, or per element (mask)
        if self.class_mask is None:
            off = ek if cw is None else jnp.broadcast_to(ek * cw, self.x.shape)
            off_sum = eps if cw is None else ek * jnp.sum(cw)
        else:
            wm = self.weighted(jnp.ones(self.x.shape, dtype))
            off = wm * ek[..., None]
            off_sum = (
                eps * jnp.ones(self.labels.shape, dtype)
                if cw is None
                else ek * jnp.sum(wm, axis=-1)
            )
        return on, off, on + off_sum

    def dense_sparse_targets(self) -> Array:
        """``a_c = on [c = y] + off_c`` as a classes-last array."""
        on, off, _ = self.sparse_targets()
        a = jnp.where(self.is_label(), on[..., None], jnp.zeros((), on.dtype))
        return a if off is None else a + off

    def poison(self, values: Array) -> Array:
        """NaN where a present label is outside ``[0, K)``: never a wrapped class.

        Multiplying (rather than selecting) makes the value *and* the gradient of
        such an element NaN, in autodiff and in the closed forms alike. Use
        `jaxce.validate` for a clear error instead.
        """
        return nan_where(self.bad_label, values)

    def reduce(self, loss: Array, denom_weights: Array | None = None) -> Array:
        """The reduced loss (out-of-range labels poisoned first)."""
        return self.reducer.reduce(self.poison(loss), denom_weights)

    def gradient(self, grad: Array, denom_weights: Array | None = None) -> Array:
        """``c_n dL_n/dx_nc`` with the class axis put back; 0 in absent rows."""
        coef = self.reducer.coefficients(denom_weights)
        grad = self.poison(grad)
        out = jnp.where(
            self.present[..., None], coef[..., None] * grad, jnp.zeros((), grad.dtype)
        )
        return jnp.moveaxis(out, -1, self.axis).astype(self.reducer.out_dtype)


def _class_mask(where, x: Array, axis: int, name: str):
    """Split ``where`` into (class mask, classes last, or None; element mask).

    A ``where`` with as many dimensions as the input is a per-class mask (it
    removes classes from the softmax); anything else is a per-element mask.
    """
    where = check_bool_mask(where)
    if where is None or where.ndim != x.ndim:
        return None, where
    try:
        return jnp.broadcast_to(
            jnp.moveaxis(where, axis, -1), _last(x, axis).shape
        ), None
    except ValueError:
        raise ValueError(
            f"`where` of shape {where.shape} has as many dimensions as `{name}` "
            f"{x.shape}, so it is a per-class mask, but it does not broadcast to "
            f"`{name}`."
        ) from None


def _last(x: Array, axis: int) -> Array:
    return jnp.moveaxis(x, axis, -1)


def prepare_categorical(
    x: ArrayLike,
    y: ArrayLike,
    *,
    name: str,
    sparse: bool,
    axis: int,
    where,
    class_weights: ArrayLike | None,
    label_smoothing: object,
    weights: ArrayLike | None,
    reduction: str,
    base: Number | None,
    normalizer: ArrayLike | None = None,
    ignore_index: object = None,
) -> Categorical:
    """Check every shared argument of a categorical loss (trace time).

    Args:
        x: logits or probabilities (``name``), classes along ``axis``.
        y: integer labels (``sparse=True``, the shape of ``x`` without ``axis``)
            or target distributions (the shape of ``x``).
        name, sparse, axis, where, class_weights, label_smoothing, weights,
            reduction, base, ignore_index: the loss's arguments.
    """
    x = as_float_input(x, name)
    if sparse:
        labels = jnp.asarray(y)
        check_integer_labels(labels)
        targets = None
        dtype = compute_dtype(x.dtype)
    else:
        labels = None
        targets = as_float_input(y, "targets")
        dtype = compute_dtype(x.dtype, targets.dtype)
    check_label_smoothing(label_smoothing)
    axis = normalize_axis(axis, x.ndim, name)
    xl = _last(x, axis).astype(dtype)
    class_mask, element_where = _class_mask(where, x, axis, name)
    present = element_mask(element_where, xl.shape[:-1])
    count = None
    if class_mask is not None:
        present = present & jnp.any(class_mask, axis=-1)
        count = jnp.sum(class_mask, axis=-1).astype(dtype)
    may_be_absent = element_where is not None or class_mask is not None
    bad_label = None
    if labels is not None:
        if labels.shape != xl.shape[:-1]:
            raise ValueError(
                f"`labels` must have the input's shape without the class axis "
                f"{xl.shape[:-1]}, got {labels.shape}."
            )
        ignore = check_ignore_index(ignore_index)
        if ignore is not None:
            present = present & (labels != ignore)
            may_be_absent = True
        in_range = ~out_of_range(labels, xl.shape[-1])
        bad_label = present & ~in_range
        labels = jnp.where(present & in_range, labels, 0)
    if targets is not None:
        if targets.ndim != x.ndim:
            hint = (
                " For integer class labels use the sparse_* loss."
                if targets.ndim == x.ndim - 1
                else ""
            )
            raise ValueError(
                f"`targets` must have the shape of the input {x.shape}, got "
                f"{targets.shape}." + hint
            )
        if _last(targets, axis).shape != xl.shape:
            raise ValueError(
                f"`targets` must have the shape of the input, got {targets.shape} "
                f"for input of shape {x.shape}."
            )
        targets = _last(targets, axis).astype(dtype)
    cw = check_class_weights(class_weights, xl.shape[-1], dtype)
    reducer = make_reducer(
        present,
        dtype,
        x.dtype,
        weights=weights,
        reduction=reduction,
        base=base,
        normalizer=normalizer,
    )
    return Categorical(
        xl, axis, class_mask, count, may_be_absent, labels, bad_label, targets,
        cw, label_smoothing, reducer, explicitly_sharded(x, y),
    )  # fmt: skip
