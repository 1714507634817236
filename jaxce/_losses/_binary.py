"""Binary cross-entropy: from logits (sigmoid) and from probabilities."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Real

from .._core import (
    Number,
    Reduction,
    ScalarLike,
    clip_bounds,
    log_sigmoid_pair,
    prepare_elementwise,
    resolve_eps,
    safe_xlogy,
)


def sigmoid_binary_cross_entropy(
    logits: Float[ArrayLike, " *shape"],
    labels: Real[ArrayLike, " *shape"],
    *,
    weights: Float[ArrayLike, "..."] | None = None,
    pos_weight: Float[ArrayLike, "..."] | None = None,
    label_smoothing: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Binary cross-entropy from logits, with the sigmoid folded in.

    Per element, with labels $y \in [0, 1]$ smoothed to
    $(1 - \varepsilon) y + \varepsilon / 2$ and positive-class weight $p_w$:

    $$L = -\left[p_w\, y \log \sigma(z) + (1 - y) \log \sigma(-z)\right]$$

    computed in log space (one shared $e^{-|z|}$), so logits of $\pm 10^4$ and
    $\pm\infty$ (with the matching hard label) stay finite. ``weights`` multiplies each
    element. ``reduction="mean"`` divides by the sum of weights of present
    elements (scikit-learn ``log_loss``); PyTorch's
    ``binary_cross_entropy_with_logits(weight=)`` and Keras divide by the element
    count: ``reduction="sum_over_batch_size"``.

    Differentiable in ``labels`` too (soft labels, label optimisation):
    $\partial L / \partial y = \log \sigma(-z) - p_w \log \sigma(z)$, which is
    $-z$ for $p_w = 1$, at labels of exactly 0 and 1 included (PyTorch's). At
    $z = \mp\infty$ with the matching label the loss is 0 and the label
    derivative of the vanishing term (mathematically infinite: the loss jumps to
    $+\infty$ for any other label) is taken as 0.

    Args:
        logits: scores $z$, any shape.
        labels: 0/1 or soft labels in $[0, 1]$, the shape of ``logits``.
        weights: per-element weights, broadcast to ``logits``.
        pos_weight: weight $p_w$ of the positive term, broadcast to ``logits``
            (PyTorch ``pos_weight``, e.g. one per class on the last axis).
        label_smoothing: $\varepsilon \in [0, 1)$, towards 0.5 (Keras).
        where: boolean mask of present elements.
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient accumulation:
            give every microbatch the whole batch's total).
        base: log base of the result (``None``: nats).

    Returns:
        Per-element losses for ``"none"``, else a scalar; dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([2.0, -1.0, 0.0])
        >>> labels = jnp.array([1.0, 0.0, 1.0])
        >>> print(jaxce.sigmoid_binary_cross_entropy(logits, labels, reduction="none"))
        [0.12693 0.31326 0.69315]
        >>> print(jaxce.sigmoid_binary_cross_entropy(logits, labels, pos_weight=2.0))
        0.65114

    References:
        PyTorch ``torch.nn.BCEWithLogitsLoss``; optax
        ``sigmoid_binary_cross_entropy``.
    """
    b = prepare_elementwise(
        logits, labels, name="logits", label_smoothing=label_smoothing,
        where=where, weights=weights, reduction=reduction, base=base,
        normalizer=normalizer,
    )  # fmt: skip
    log_p, log_not_p = log_sigmoid_pair(b.x)  # jax.nn.log_sigmoid(z), (-z)
    pos = safe_xlogy(b.y, log_p)
    if pos_weight is not None:
        pos = pos * b.per_element(pos_weight, "pos_weight")
    return b.reduce(-(pos + safe_xlogy(1 - b.y, log_not_p)))


def binary_cross_entropy(
    probs: Float[ArrayLike, " *shape"],
    labels: Real[ArrayLike, " *shape"],
    *,
    eps: Number | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    label_smoothing: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Binary cross-entropy from probabilities (the articles' formula).

    Probabilities are clipped to $[\epsilon, 1 - \epsilon]$ (zero gradient where
    clipped; where $1 - \epsilon$ rounds to 1 in the compute dtype, the largest
    number below 1 is used instead), then per element

    $$L = -\left[y \log p + (1 - y) \log(1 - p)\right]$$

    ``eps=None`` is the machine epsilon of the compute dtype (float32:
    ``1.19e-7``); ``eps=1e-7`` reproduces Keras ``BinaryCrossentropy``,
    ``eps=1e-15`` the seed article's NumPy code. Prefer
    `sigmoid_binary_cross_entropy` when you have logits. PyTorch ``BCELoss``
    (which divides by the element count) is ``reduction="sum_over_batch_size"``.
    The gradient in ``labels`` is $\log(1 - \bar p) - \log \bar p$ everywhere,
    labels of 0 and 1 included.

    Args:
        probs: predicted probabilities $p$ of the positive class.
        labels: 0/1 or soft labels in $[0, 1]$, the shape of ``probs``.
        eps: clipping $\epsilon \in (0, 0.5)$ or ``None``.
        weights: per-element weights, broadcast to ``probs``.
        label_smoothing: $\varepsilon \in [0, 1)$, towards 0.5 (Keras).
        where: boolean mask of present elements.
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient accumulation:
            give every microbatch the whole batch's total).
        base: log base of the result (``None``: nats, ``10``: the articles').

    Returns:
        Per-element losses for ``"none"``, else a scalar; dtype of ``probs``.

    Examples:
        The seed article's clipped NumPy example:

        >>> import jax.numpy as jnp, jaxce
        >>> probs = jnp.array([0.8, 0.3, 0.7, 0.2])
        >>> labels = jnp.array([1.0, 0.0, 1.0, 0.0])
        >>> print(jaxce.binary_cross_entropy(probs, labels, eps=1e-15))
        0.28990924

    References:
        PyTorch ``torch.nn.BCELoss``; Keras ``BinaryCrossentropy``.
    """
    b = prepare_elementwise(
        probs, labels, name="probs", label_smoothing=label_smoothing,
        where=where, weights=weights, reduction=reduction, base=base,
        normalizer=normalizer,
    )  # fmt: skip
    p = jnp.clip(b.x, *clip_bounds(resolve_eps(eps, b.dtype), b.dtype))
    y = b.y
    return b.reduce(-(safe_xlogy(y, jnp.log(p)) + safe_xlogy(1 - y, jnp.log1p(-p))))
