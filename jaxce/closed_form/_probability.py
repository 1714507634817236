"""Closed-form gradients of the probability-space categorical cross-entropies.

For ``L = -sum_c a_c log clip(p_c, eps, 1 - eps)`` the gradient is
``dL/dp_j = -a_j / clip(p_j) * [eps < p_j < 1 - eps]``: rows are not renormalised,
so each class is independent (no softmax coupling).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core import (
    Categorical,
    clip_derivative,
)
from .._losses import _probability as loss
from .._losses._probability import prepare_probs
from ._arguments import same_arguments


def _clipped_log_grad(c: Categorical, a: Array, eps: float) -> Array:
    """``-a / clip(p) * clip'(p)`` along the last axis; 0 on masked classes.

    Linear in ``a``, so that the closed form differentiated in the targets is
    exact (``-clip'(p) / clip(p)``) also where a target is 0.
    """
    p = c.x
    coef = clip_derivative(p, eps, 1 - eps) / jnp.clip(p, eps, 1 - eps)
    if c.class_mask is not None:  # whatever the input holds there
        coef = jnp.where(c.class_mask, coef, jnp.zeros((), coef.dtype))
    return jnp.zeros((), coef.dtype) - a * coef  # +0.0 (not -0.0) where a == 0


@same_arguments(loss.categorical_cross_entropy)
def categorical_cross_entropy(
    probs, targets, **options
) -> Float[Array, " *batch classes"]:
    r"""Gradient of `jaxce.categorical_cross_entropy` with respect to ``probs``.

    With $\bar p = \operatorname{clip}(p, \epsilon, 1 - \epsilon)$ and
    $a_c = w_c \tilde t_c$ (class weights times smoothed targets, 0 on classes a
    per-class ``where`` removes):

    $$\frac{\partial R}{\partial p_{nj}} = -c_n \frac{a_{nj}}{\bar p_{nj}}\,
        \mathbb{1}[\epsilon < p_{nj} < 1 - \epsilon]$$

    (1/2 on a clipping bound, JAX's ``jnp.clip`` convention). $c_n$ is the
    reduction's derivative, as in `jaxce.closed_form.softmax_cross_entropy`. Same
    arguments as the loss.

    Returns:
        $\partial R / \partial p$, the shape and dtype of ``probs``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> probs = jnp.array([0.05, 0.85, 0.10])
        >>> print(jaxce.closed_form.categorical_cross_entropy(
        ...     probs, jnp.array([0.0, 1.0, 0.0])))
        [ 0.00000 -1.17647  0.00000]
    """
    c, e = prepare_probs(probs, targets, sparse=False, **options)
    assert c.targets is not None
    grad = _clipped_log_grad(c, c.weighted(c.smooth(c.targets)), e)
    return c.gradient(grad, None if c.class_weights is None else c.class_sum(c.targets))


@same_arguments(loss.sparse_categorical_cross_entropy)
def sparse_categorical_cross_entropy(
    probs, labels, **options
) -> Float[Array, " *batch classes"]:
    r"""Gradient of `jaxce.sparse_categorical_cross_entropy` w.r.t. ``probs``.

    With $\bar p = \operatorname{clip}(p, \epsilon, 1 - \epsilon)$ and
    $a_c = (1 - \varepsilon) w_y [c = y] + \tfrac{\varepsilon}{K} w_c m_c$:

    $$\frac{\partial R}{\partial p_{nj}} = -c_n \frac{a_{nj}}{\bar p_{nj}}\,
        \mathbb{1}[\epsilon < p_{nj} < 1 - \epsilon]$$

    i.e. $-1/p_y$ on the label and 0 elsewhere without smoothing. $c_n$ is the
    reduction's derivative, as in
    `jaxce.closed_form.sparse_softmax_cross_entropy` (``"mean"`` divides by
    $\sum_m \text{weights}_m w_{y_m}$). Same arguments as the loss.

    Returns:
        $\partial R / \partial p$, the shape and dtype of ``probs``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> probs = jnp.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3]])
        >>> print(jaxce.closed_form.sparse_categorical_cross_entropy(
        ...     probs, jnp.array([0, 2]), reduction="sum", base=10))
        [[-0.62042  0.00000  0.00000]
         [ 0.00000  0.00000 -1.44765]]
    """
    c, e = prepare_probs(probs, labels, sparse=True, **options)
    grad = _clipped_log_grad(c, c.dense_sparse_targets(), e)
    return c.gradient(grad, c.label_weights())
