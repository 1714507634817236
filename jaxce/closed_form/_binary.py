"""Closed-form gradients of the binary cross-entropies (logits and probabilities)."""

from __future__ import annotations

import jax
from jaxtyping import Array, Float

from .._core import (
    clip_bounds,
    clip_derivative,
    prepare_elementwise,
    resolve_eps,
)
from .._losses import _binary as loss
from ._arguments import same_arguments


@same_arguments(loss.sigmoid_binary_cross_entropy)
def sigmoid_binary_cross_entropy(
    logits, labels, *, pos_weight, **options
) -> Float[Array, " *shape"]:
    r"""Gradient of `jaxce.sigmoid_binary_cross_entropy` with respect to ``logits``.

    With the smoothed label $y = (1 - \varepsilon) y + \varepsilon / 2$ and
    positive weight $p_w$ (default 1):

    $$\frac{\partial R}{\partial z_n}
        = c_n \big[(1 - y_n)\,\sigma(z_n) - p_w\, y_n\, \sigma(-z_n)\big]$$

    which is ``sigmoid(z) - y`` when $p_w = 1$. $c_n$ is the reduction's
    derivative: ``weights_n`` for ``"sum"`` and ``"none"`` (gradient of the sum),
    divided by the sum of weights of present elements for ``"mean"`` or by their
    count for ``"sum_over_batch_size"``, times $1/\ln(\text{base})$; 0 where
    ``where`` is False. Same arguments as the loss.

    Returns:
        $\partial R / \partial z$, the shape and dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([2.0, -1.0, 0.0])
        >>> labels = jnp.array([1.0, 0.0, 1.0])
        >>> print(jaxce.closed_form.sigmoid_binary_cross_entropy(
        ...     logits, labels, reduction="sum"))
        [-0.11920  0.26894 -0.50000]
        >>> print(jaxce.closed_form.sigmoid_binary_cross_entropy(
        ...     logits, labels, pos_weight=2.0, reduction="sum"))
        [-0.23841  0.26894 -1.00000]
    """
    b = prepare_elementwise(logits, labels, name="logits", **options)
    z, y = b.x, b.y
    pos = y * jax.nn.sigmoid(-z)
    if pos_weight is not None:
        pos = pos * b.per_element(pos_weight, "pos_weight")
    return b.gradient((1 - y) * jax.nn.sigmoid(z) - pos)


@same_arguments(loss.binary_cross_entropy)
def binary_cross_entropy(probs, labels, *, eps, **options) -> Float[Array, " *shape"]:
    r"""Gradient of `jaxce.binary_cross_entropy` with respect to ``probs``.

    With $\bar p = \operatorname{clip}(p, \epsilon, 1 - \epsilon)$ and the
    (smoothed) label $y$:

    $$\frac{\partial R}{\partial p_n} = c_n \left(\frac{1 - y_n}{1 - \bar p_n}
        - \frac{y_n}{\bar p_n}\right) \mathbb{1}[\epsilon < p_n < 1 - \epsilon]$$

    so the gradient is 0 where the probability was clipped (and 1/2 of the
    unclipped value exactly on a bound, JAX's convention for ``jnp.clip``). $c_n$
    is the reduction's derivative, as in
    `jaxce.closed_form.sigmoid_binary_cross_entropy`. Same arguments as the loss.

    Returns:
        $\partial R / \partial p$, the shape and dtype of ``probs``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> probs = jnp.array([0.8, 0.3, 0.0])
        >>> labels = jnp.array([1.0, 0.0, 1.0])
        >>> print(jaxce.closed_form.binary_cross_entropy(
        ...     probs, labels, reduction="sum"))
        [-1.25000  1.42857  0.00000]
    """
    b = prepare_elementwise(probs, labels, name="probs", **options)
    p, y = b.x, b.y
    lo, hi = clip_bounds(resolve_eps(eps, b.dtype), b.dtype)
    pc = p.clip(lo, hi)
    return b.gradient(((1 - y) / (1 - pc) - y / pc) * clip_derivative(p, lo, hi))
