"""Focal losses (Lin et al., 2017) from logits: sigmoid and softmax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from .._core import (
    Categorical,
    Elementwise,
    IndexLike,
    Number,
    Reduction,
    ScalarLike,
    check_nonneg,
    check_range,
    focal_factor,
    log_sigmoid_pair,
    power_from_log,
    prepare_elementwise,
    safe_xlogy,
    shifted_log_softmax,
)
from ._softmax import prepare_logits


def prepare_sigmoid_focal(
    logits, labels, *, alpha, gamma, **options
) -> tuple[Elementwise, Array | None]:
    """Check a sigmoid focal loss's arguments; ``alpha_t`` per element (or None)."""
    check_nonneg(gamma, "gamma")
    check_range(alpha, "alpha", 0.0, 1.0)
    b = prepare_elementwise(
        logits, labels, name="logits", label_smoothing=0.0, **options
    )
    if alpha is None:
        return b, None
    a = jnp.asarray(alpha, b.dtype)
    return b, a * b.y + (1 - a) * (1 - b.y)


def prepare_softmax_focal(
    logits, labels, *, alpha, gamma, **options
) -> tuple[Categorical, Array, Array | None]:
    """Check a softmax focal loss's arguments: the `Categorical`, the logits to
    use and ``alpha_y`` per element (None without ``alpha``).

    ``alpha`` is a scalar or a ``(classes,)`` array, every entry ``>= 0``.
    """
    check_nonneg(gamma, "gamma")
    c, z = prepare_logits(logits, labels, sparse=True, label_smoothing=0.0, **options)
    if alpha is None:
        return c, z, None
    check_nonneg(alpha, "alpha")
    a = jnp.asarray(alpha)
    if a.ndim == 0:
        return c, z, a.astype(c.dtype)
    if a.shape != (c.num_classes,):
        raise ValueError(
            f"`alpha` must be a scalar or have shape ({c.num_classes},), got {a.shape}."
        )
    return c, z, c.per_label(a.astype(c.dtype))


def sigmoid_focal_loss(
    logits: Float[ArrayLike, " *shape"],
    labels: Real[ArrayLike, " *shape"],
    *,
    alpha: ScalarLike | None = None,
    gamma: ScalarLike = 2.0,
    weights: Float[ArrayLike, "..."] | None = None,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Sigmoid focal loss: binary cross-entropy down-weighting easy examples.

    With $p = \sigma(z)$, $p_t = p y + (1 - p)(1 - y)$ and
    $\alpha_t = \alpha y + (1 - \alpha)(1 - y)$ (1 when ``alpha=None``):

    $$L = -\alpha_t (1 - p_t)^\gamma
        \left[y \log \sigma(z) + (1 - y) \log \sigma(-z)\right]$$

    ``gamma=0, alpha=None`` is `sigmoid_binary_cross_entropy`. ``reduction="none"``
    equals optax ``sigmoid_focal_loss``; Keras ``BinaryFocalCrossentropy
    (apply_class_balancing=True, alpha=a)`` is ``alpha=a`` with
    ``reduction="sum_over_batch_size"``. $\alpha_t$ is part of the per-element loss,
    not of the ``"mean"`` denominator (which uses ``weights`` only).

    $(1 - p_t)^\gamma$ is formed from $\log(1 - p_t)$ in log space (finite
    gradients and Hessians at saturated logits), with the exact derivative in
    the labels, 0 and 1 included (PyTorch's / torchvision's formula; optax's
    log-space version drops a term there). For $\gamma < 1$ that derivative is
    unbounded where $1 - p_t \to 0$ and may be ``inf``.

    Args:
        logits: scores $z$.
        labels: 0/1 or soft labels in $[0, 1]$, the shape of ``logits``.
        alpha: balance $\alpha \in [0, 1]$ of the positive class, or ``None``.
        gamma: focusing parameter $\gamma \ge 0$.
        weights: per-element weights, broadcast to ``logits``.
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
        >>> print(jaxce.sigmoid_focal_loss(logits, labels, reduction="none"))
        [0.00180 0.02266 0.17329]

    References:
        Lin et al., *Focal Loss for Dense Object Detection*, 2017,
        https://arxiv.org/abs/1708.02002.
    """
    b, alpha_t = prepare_sigmoid_focal(
        logits, labels, alpha=alpha, gamma=gamma, where=where, weights=weights,
        reduction=reduction, base=base,
        normalizer=normalizer,
    )  # fmt: skip
    y = b.y
    log_p, log_not_p = log_sigmoid_pair(b.x)
    ce = -(safe_xlogy(y, log_p) + safe_xlogy(1 - y, log_not_p))
    # (1 - p_t)^gamma from log(1 - p_t) = log(y sigmoid(-z) + (1 - y) sigmoid(z)),
    # with the exact derivative in the label (linear in y inside the log).
    loss = focal_factor(y, log_p, log_not_p, gamma) * ce
    return b.reduce(loss if alpha_t is None else alpha_t * loss)


def softmax_focal_loss(
    logits: Float[ArrayLike, " *batch classes"],
    labels: Int[ArrayLike, "..."],
    *,
    axis: int = -1,
    alpha: ScalarLike | Float[ArrayLike, " num_classes"] | None = None,
    gamma: ScalarLike = 2.0,
    weights: Float[ArrayLike, "..."] | None = None,
    ignore_index: IndexLike | None = None,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Softmax focal loss with integer labels.

    With $p_y = \operatorname{softmax}(z)_y$ (from `jax.nn.log_softmax`):

    $$L = -\alpha_y (1 - p_y)^\gamma \log p_y$$

    ``alpha`` is a scalar (Keras ``CategoricalFocalCrossentropy``'s ``alpha``), a
    ``(classes,)`` array of per-class $\alpha_c$, or ``None`` (1).
    ``gamma=0, alpha=None`` is `sparse_softmax_cross_entropy`. ``reduction="mean"``
    divides by the sum of ``weights`` over present elements. Keras is
    ``reduction="sum_over_batch_size"``. $(1 - p_y)^\gamma$ is formed from
    $\log(1 - p_y)$ (a logsumexp over the other classes), so gradients and Hessians
    stay finite at saturated logits. A present label outside ``[0, K)`` gives NaN.

    Args:
        logits: unnormalised scores, classes along ``axis``.
        labels: integer class indices, the shape of ``logits`` without ``axis``.
        axis: the class axis.
        alpha: scalar $\ge 0$, ``(classes,)`` array, or ``None``.
        gamma: focusing parameter $\gamma \ge 0$.
        weights: per-element sample weights, broadcast to the loss shape.
        ignore_index: label value marking absent elements.
        where: per-element mask (loss shape) or per-class mask (logits shape).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient accumulation:
            give every microbatch the whole batch's total).
        base: log base of the result (``None``: nats).

    Returns:
        The loss, shape of ``labels`` for ``"none"`` else a scalar; dtype of
        ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> labels = jnp.array([0, 1])
        >>> loss = jaxce.softmax_focal_loss(
        ...     logits, labels, alpha=0.25, reduction="none")
        >>> print(loss)
        [0.00757 0.70525]

    References:
        Lin et al., *Focal Loss for Dense Object Detection*, 2017,
        https://arxiv.org/abs/1708.02002.
    """
    c, z, alpha_y = prepare_softmax_focal(
        logits, labels, alpha=alpha, gamma=gamma, ignore_index=ignore_index,
        axis=axis, where=where, weights=weights, reduction=reduction, base=base,
        normalizer=normalizer,
        class_weights=None,
    )  # fmt: skip
    shifted, log_norm = shifted_log_softmax(z)
    logp_y = c.take(shifted) - log_norm
    # log(1 - p_y) = logsumexp over the other classes - lse (no cancellation),
    # both after the row maximum is subtracted.
    z_other = jnp.where(c.is_label(), -jnp.inf, shifted)
    has_other = jnp.any(z_other > -jnp.inf, axis=-1)
    z_other = jnp.where(has_other[..., None], z_other, jnp.zeros((), c.dtype))
    log_rest = jax.nn.logsumexp(z_other, axis=-1) - log_norm
    log_rest = jnp.where(has_other, log_rest, -jnp.inf)
    loss = -power_from_log(log_rest, gamma) * logp_y
    return c.reduce(loss if alpha_y is None else alpha_y * loss)
