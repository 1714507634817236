"""Categorical cross-entropy from probabilities (Keras ``from_logits=False``)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from .._core import (
    Categorical,
    IndexLike,
    Number,
    Reduction,
    ScalarLike,
    prepare_categorical,
    resolve_eps,
)


def prepare_probs(
    probs, y, *, sparse: bool, eps: Number | None, ignore_index=None, **options
) -> tuple[Categorical, float]:
    """Check a probability loss's arguments; the clipping ``eps`` to use."""
    c = prepare_categorical(
        probs, y, name="probs", sparse=sparse, ignore_index=ignore_index, **options
    )
    return c, resolve_eps(eps, c.dtype)


def clipped_log(c: Categorical, eps: float) -> Array:
    """``log clip(p, eps, 1 - eps)``; ``-inf`` on classes a class mask removes."""
    logp = jnp.log(c.keep(jnp.clip(c.x, eps, 1 - eps), 1))
    if c.class_mask is not None:
        logp = jnp.where(c.class_mask, logp, -jnp.inf)
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
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Categorical cross-entropy from probabilities and target distributions.

    Probabilities are clipped to $[\epsilon, 1 - \epsilon]$ (zero gradient where
    clipped; rows are **not** renormalised, see `jaxce.validate`), then

    $$L = -\sum_c w_c\, t_c \log p_c$$

    with targets smoothed to $(1 - \varepsilon) t + \varepsilon / K$. Reductions,
    class weights and ``where`` behave as in `softmax_cross_entropy`. Keras
    ``CategoricalCrossentropy`` is ``eps=1e-7, reduction="sum_over_batch_size"``
    (on rows that sum to 1). The gradient in ``targets`` is $-w_c \log \bar p_c$
    (times the smoothing's $1 - \varepsilon$ and the reduction's coefficient),
    also where $t_c = 0$.

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
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient accumulation:
            give every microbatch the whole batch's total).
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
    c, e = prepare_probs(
        probs, targets, sparse=False, eps=eps, axis=axis, where=where,
        class_weights=class_weights, label_smoothing=label_smoothing,
        weights=weights, reduction=reduction, base=base,
        normalizer=normalizer,
    )  # fmt: skip
    return c.reduce(*c.dense_nll(clipped_log(c, e)))


def sparse_categorical_cross_entropy(
    probs: Float[ArrayLike, " *batch classes"],
    labels: Int[ArrayLike, "..."],
    *,
    axis: int = -1,
    eps: Number | None = None,
    class_weights: Float[ArrayLike, " num_classes"] | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    ignore_index: IndexLike | None = None,
    label_smoothing: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
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
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient accumulation:
            give every microbatch the whole batch's total).
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
    c, e = prepare_probs(
        probs, labels, sparse=True, eps=eps, ignore_index=ignore_index, axis=axis,
        where=where, class_weights=class_weights, label_smoothing=label_smoothing,
        weights=weights, reduction=reduction, base=base,
        normalizer=normalizer,
    )  # fmt: skip
    logp = clipped_log(c, e)
    return c.reduce(*c.sparse_nll(c.take(logp), lambda: logp))
