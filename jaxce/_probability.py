"""Categorical cross-entropy from probabilities (Keras ``from_logits=False``)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from ._categorical import (
    Classes,
    class_sum,
    dense_loss,
    sparse_loss,
)
from ._options import (
    Number,
    Reduction,
    ScalarLike,
    as_float_input,
    compute_dtype,
    is_static_zero,
    reduce_loss,
    resolve_eps,
)


def _clipped_log(classes: Classes, eps: float | None) -> Array:
    e = resolve_eps(eps, classes.dtype)
    p = classes.keep(jnp.clip(classes.x, e, 1 - e), 1)
    logp = jnp.log(p)
    if classes.class_mask is not None:
        logp = jnp.where(classes.class_mask, logp, -jnp.inf)
    return logp


def categorical_cross_entropy(
    probs: Float[ArrayLike, " *batch classes"],
    targets: Real[ArrayLike, " *batch classes"],
    *,
    axis: int = -1,
    eps: Number | None = None,
    class_weights: Float[ArrayLike, " num_classes"] | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    label_smoothing: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Categorical cross-entropy from probabilities and target distributions.

    Probabilities are clipped to $[\epsilon, 1 - \epsilon]$ (zero gradient where
    clipped; rows are **not** renormalised, see `jaxce.validate`), then

    $$L = -\sum_c w_c\, t_c \log p_c$$

    with targets smoothed to $(1 - \varepsilon) t + \varepsilon / K$. Reductions,
    class weights and ``where`` behave as in `softmax_cross_entropy`. Keras
    ``CategoricalCrossentropy`` is ``eps=1e-7, reduction="sum_over_batch_size"``
    (on rows that sum to 1).

    Args:
        probs: predicted probabilities, classes along ``axis``.
        targets: target distributions, the shape of ``probs``.
        axis: the class axis.
        eps: clipping $\epsilon \in (0, 0.5)$; ``None`` is the machine epsilon.
        class_weights: ``(classes,)`` per-class weights $w$.
        weights: per-element sample weights, broadcast to the loss shape.
        label_smoothing: $\varepsilon \in [0, 1)$.
        where: per-element mask (loss shape) or per-class mask (probs shape).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        base: log base of the result (``None``: nats, ``10``: the articles').

    Returns:
        The loss, shape ``*batch`` for ``"none"`` else a scalar; dtype of ``probs``.

    Examples:
        The seed article's TensorFlow example (dog = class 1):

        >>> import jax.numpy as jnp, jaxce
        >>> probs = jnp.array([0.05, 0.85, 0.10])
        >>> print(jaxce.categorical_cross_entropy(probs, jnp.array([0.0, 1.0, 0.0])))
        0.1625189

    References:
        Keras ``CategoricalCrossentropy``; PyTorch ``F.nll_loss`` on log-probs.
    """
    probs = as_float_input(probs, "probs")
    targets = as_float_input(targets, "targets")
    dtype = compute_dtype(probs.dtype, targets.dtype)
    classes = Classes(probs, axis, where, "probs", dtype)
    t_raw = classes.check_targets(targets)
    cw = classes.class_weights(class_weights)
    logp = _clipped_log(classes, eps)
    t = classes.smooth(t_raw, label_smoothing)
    loss, denom = dense_loss(logp, t, t_raw, cw, classes)
    return reduce_loss(
        loss,
        present=classes.present,
        weights=weights,
        denom_weights=denom,
        reduction=reduction,
        base=base,
        out_dtype=probs.dtype,
    )


def sparse_categorical_cross_entropy(
    probs: Float[ArrayLike, " *batch classes"],
    labels: Int[ArrayLike, "..."],
    *,
    axis: int = -1,
    eps: Number | None = None,
    class_weights: Float[ArrayLike, " num_classes"] | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    ignore_index: int | None = None,
    label_smoothing: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Categorical cross-entropy from probabilities and integer labels.

    With $p$ clipped to $[\epsilon, 1 - \epsilon]$:

    $$L = -(1 - \varepsilon)\, w_y \log p_y
        - \frac{\varepsilon}{K} \sum_c w_c \log p_c$$

    ``reduction="mean"`` divides by ``sum(weights * w_y)`` over present elements
    (scikit-learn ``log_loss`` with ``sample_weight``; PyTorch ``nll_loss``).
    A present label outside ``[0, K)`` makes that element's loss NaN (never a
    wrapped class); `jaxce.validate` turns it into an error.
    Keras ``SparseCategoricalCrossentropy(ignore_class=k)`` is
    ``ignore_index=k, eps=1e-7, reduction="sum_over_batch_size"``.

    Args:
        probs: predicted probabilities, classes along ``axis``.
        labels: integer class indices, the shape of ``probs`` without ``axis``.
        axis: the class axis.
        eps: clipping $\epsilon \in (0, 0.5)$; ``None`` is the machine epsilon.
        class_weights: ``(classes,)`` per-class weights $w$.
        weights: per-element sample weights, broadcast to the loss shape.
        ignore_index: label value marking absent elements.
        label_smoothing: $\varepsilon \in [0, 1)$.
        where: per-element mask (loss shape) or per-class mask (probs shape).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        base: log base of the result (``None``: nats, ``10``: the articles').

    Returns:
        The loss, shape of ``labels`` for ``"none"`` else a scalar; dtype of
        ``probs``.

    Examples:
        The seed article's fruit containers (orange, lemon, lemon), summed in
        base 10:

        >>> import jax.numpy as jnp, jaxce
        >>> probs = jnp.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4]])
        >>> labels = jnp.array([0, 2, 2])
        >>> print(jaxce.sparse_categorical_cross_entropy(
        ...     probs, labels, reduction="sum", base=10))
        1.07572

    References:
        Keras ``SparseCategoricalCrossentropy``; scikit-learn ``log_loss``.
    """
    probs = as_float_input(probs, "probs")
    labels = jnp.asarray(labels)
    dtype = compute_dtype(probs.dtype)
    classes = Classes(probs, axis, where, "probs", dtype)
    safe_labels = classes.check_labels(labels, ignore_index)
    cw = classes.class_weights(class_weights)
    logp = _clipped_log(classes, eps)
    logp_y = jnp.take_along_axis(logp, safe_labels[..., None], axis=-1)[..., 0]
    sum_logp = None
    if not is_static_zero(label_smoothing):
        sum_logp = class_sum(logp, cw, classes)
    loss, denom = sparse_loss(
        logp_y, sum_logp, cw, safe_labels, label_smoothing, classes
    )
    loss = classes.poison_bad_labels(loss)
    return reduce_loss(
        loss,
        present=classes.present,
        weights=weights,
        denom_weights=denom,
        reduction=reduction,
        base=base,
        out_dtype=probs.dtype,
    )
