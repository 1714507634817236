"""Closed-form gradients of the focal losses (sigmoid and softmax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core import (
    is_static_zero,
    safe_power,
    safe_xlogy,
    shifted_log_softmax,
)
from .._losses import _focal as loss
from .._losses._focal import prepare_sigmoid_focal, prepare_softmax_focal
from ._arguments import same_arguments


def _focal_factor_grad(q: Array, dlog_q: Array, gamma) -> tuple[Array, Array]:
    """``q**gamma`` and its derivative ``gamma * q**gamma * dlog_q`` (0 at q = 0)."""
    qg = safe_power(q, gamma)
    if is_static_zero(gamma):
        return qg, jnp.zeros_like(q)
    g = jnp.asarray(gamma, q.dtype)
    return qg, g * qg * jnp.where(q > 0, dlog_q, jnp.zeros((), q.dtype))


@same_arguments(loss.sigmoid_focal_loss)
def sigmoid_focal_loss(logits, labels, *, gamma, **options) -> Float[Array, " *shape"]:
    r"""Gradient of `jaxce.sigmoid_focal_loss` with respect to ``logits``.

    With $s = \sigma(z)$, the cross-entropy $\mathrm{ce}$ (whose derivative is
    $s - y$), $q = 1 - p_t = y (1 - s) + (1 - y) s$ and
    $\partial q / \partial z = (1 - 2y)\, s (1 - s)$:

    $$\frac{\partial R}{\partial z_n} = c_n \alpha_t \left[\gamma q^\gamma
        \frac{\partial q / \partial z}{q}\, \mathrm{ce} + q^\gamma (s - y)\right]$$

    ($\alpha_t = \alpha y + (1 - \alpha)(1 - y)$, 1 for ``alpha=None``; the first
    term is 0 where $q = 0$). ``gamma=0`` gives ``sigmoid(z) - y``. $c_n$ is the
    reduction's derivative, as in `jaxce.closed_form.sigmoid_binary_cross_entropy`.
    Same arguments as the loss.

    Returns:
        $\partial R / \partial z$, the shape and dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([2.0, -1.0, 0.0])
        >>> labels = jnp.array([1.0, 0.0, 1.0])
        >>> print(jaxce.closed_form.sigmoid_focal_loss(
        ...     logits, labels, reduction="sum"))
        [-0.00487  0.05258 -0.29829]
    """
    b, alpha_t = prepare_sigmoid_focal(logits, labels, gamma=gamma, **options)
    z, y = b.x, b.y
    s, sn = jax.nn.sigmoid(z), jax.nn.sigmoid(-z)
    ce = -(
        safe_xlogy(y, jax.nn.log_sigmoid(z)) + safe_xlogy(1 - y, jax.nn.log_sigmoid(-z))
    )
    q = y * sn + (1 - y) * s
    dlog_q = (1 - 2 * y) * s * sn / jnp.where(q > 0, q, jnp.ones((), b.dtype))
    qg, dqg = _focal_factor_grad(q, dlog_q, gamma)
    grad = dqg * ce + qg * ((1 - y) * s - y * sn)
    return b.gradient(grad if alpha_t is None else alpha_t * grad)


@same_arguments(loss.softmax_focal_loss)
def softmax_focal_loss(
    logits, labels, *, gamma, **options
) -> Float[Array, " *batch classes"]:
    r"""Gradient of `jaxce.softmax_focal_loss` with respect to ``logits``.

    With $s = \operatorname{softmax}(z)$, $\ell = \log p_y$ and $q = 1 - p_y$, the
    loss $L = -\alpha_y q^\gamma \ell$ depends on $z$ only through $\ell$, and
    $\partial \ell / \partial z_j = [j = y] - s_j$:

    $$\frac{\partial R}{\partial z_{nj}} = c_n\, \alpha_y
        \left[\gamma q^{\gamma - 1} p_y \ell - q^\gamma\right]
        \big([j = y] - s_j\big)$$

    ($q^{\gamma-1} p_y$ is taken as 0 where $q = 0$). ``gamma=0, alpha=None`` gives
    ``softmax(z) - onehot(y)``. $c_n$ is the reduction's derivative (``"mean"``
    divides by the sum of ``weights`` of present elements). Same arguments as the
    loss.

    Returns:
        $\partial R / \partial z$, the shape and dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> labels = jnp.array([0, 1])
        >>> print(jaxce.closed_form.softmax_focal_loss(
        ...     logits, labels, reduction="sum"))
        [[-0.06831  0.06017  0.00814]
         [ 0.05339 -1.12568  1.07230]]
    """
    c, z, alpha_y = prepare_softmax_focal(
        logits, labels, gamma=gamma, class_weights=None, **options
    )
    s = jax.nn.softmax(z, axis=-1)
    shifted, log_norm = shifted_log_softmax(z)
    logp_y = c.take(shifted) - log_norm  # no cancellation at large logits
    q = -jnp.expm1(logp_y)
    dlog_q = -jnp.exp(logp_y) / jnp.where(q > 0, q, jnp.ones((), c.dtype))
    qg, dqg = _focal_factor_grad(q, dlog_q, gamma)
    g = -(dqg * logp_y + qg)  # dL / d log p_y
    if alpha_y is not None:
        g = alpha_y * g
    return c.gradient(g[..., None] * (c.is_label().astype(c.dtype) - s))
