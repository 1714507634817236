"""Closed-form gradients of the probability-space categorical cross-entropies.

For ``L = -sum_c a_c log clip(p_c, eps, 1 - eps)`` the gradient is
``dL/dp_j = -a_j / clip(p_j) * [eps < p_j < 1 - eps]``: rows are not renormalised,
so each class is independent (no softmax coupling).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from ._categorical import Classes, class_sum
from ._closed_form_reduction import (
    clip_derivative,
    dense_sparse_targets,
    finish_classes,
    is_label,
    reduction_coefficients,
    sparse_targets,
    weighted_classes,
)
from ._options import (
    Number,
    Reduction,
    ScalarLike,
    as_float_input,
    compute_dtype,
    resolve_eps,
)


def _clipped_log_grad(classes: Classes, a: Array, eps: Number | None) -> Array:
    """``-a / clip(p) * clip'(p)`` along the last axis."""
    e = resolve_eps(eps, classes.dtype)
    p = classes.x
    grad = -a / jnp.clip(p, e, 1 - e) * clip_derivative(p, e, 1 - e)
    return jnp.where(a != 0, grad, jnp.zeros((), grad.dtype))


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
    probs = as_float_input(probs, "probs")
    targets = as_float_input(targets, "targets")
    dtype = compute_dtype(probs.dtype, targets.dtype)
    classes = Classes(probs, axis, where, "probs", dtype)
    t_raw = classes.check_targets(targets)
    cw = classes.class_weights(class_weights)
    a = weighted_classes(classes.smooth(t_raw, label_smoothing), cw, classes)
    denom = None if cw is None else class_sum(t_raw, cw, classes)
    coef = reduction_coefficients(
        classes.present,
        weights=weights,
        denom_weights=denom,
        reduction=reduction,
        base=base,
        dtype=dtype,
    )
    grad = _clipped_log_grad(classes, a, eps)
    return finish_classes(grad, coef, classes, probs.dtype)


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
    probs = as_float_input(probs, "probs")
    labels = jnp.asarray(labels)
    dtype = compute_dtype(probs.dtype)
    classes = Classes(probs, axis, where, "probs", dtype)
    safe_labels = classes.check_labels(labels, ignore_index)
    cw = classes.class_weights(class_weights)
    on, off, _, w_y = sparse_targets(safe_labels, cw, label_smoothing, classes)
    a = dense_sparse_targets(on, off, is_label(safe_labels, classes))
    coef = reduction_coefficients(
        classes.present,
        weights=weights,
        denom_weights=w_y,
        reduction=reduction,
        base=base,
        dtype=dtype,
    )
    grad = _clipped_log_grad(classes, a, eps)
    return finish_classes(grad, coef, classes, probs.dtype)
