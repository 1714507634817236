"""Closed-form gradients of the softmax cross-entropies with respect to the logits.

For ``L = -sum_c a_c log softmax(z)_c`` (``a``: weighted, smoothed, masked
targets) the gradient is ``dL/dz_j = softmax(z)_j * sum_c a_c - a_j``; the z-loss
``lambda * lse**2`` adds ``2 * lambda * lse * softmax(z)_j``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core import (
    check_nonneg,
    is_static_zero,
    softmax_and_lse,
)
from .._losses import _softmax as loss
from .._losses._softmax import prepare_logits
from ._arguments import same_arguments


@same_arguments(loss.softmax_cross_entropy)
def softmax_cross_entropy(
    logits, targets, **options
) -> Float[Array, " *batch classes"]:
    r"""Gradient of `jaxce.softmax_cross_entropy` with respect to ``logits``.

    With $a_c = w_c \tilde t_c$ (class weights times the smoothed targets
    $\tilde t = (1 - \varepsilon) t + \varepsilon / K$, 0 on classes a per-class
    ``where`` removes) and $s = \operatorname{softmax}(z)$ over the classes in play:

    $$\frac{\partial R}{\partial z_{nj}}
        = c_n \Big(s_{nj} \sum_c a_{nc} - a_{nj}\Big)$$

    which is ``softmax(z) * sum(t) - t`` ($= s - t$ for one-hot targets). $c_n$ is
    the derivative of the reduction: ``weights_n`` for ``"sum"``/``"none"``
    (gradient of the sum), divided by $\sum_m \text{weights}_m \sum_c w_c t_{mc}$
    for ``"mean"`` and by the number of present elements for
    ``"sum_over_batch_size"``; times $1 / \ln(\text{base})$; 0 for absent
    elements. Same arguments as the loss.

    Returns:
        $\partial R / \partial z$, the shape and dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> targets = jnp.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
        >>> print(jaxce.closed_form.softmax_cross_entropy(
        ...     logits, targets, reduction="sum"))
        [[-0.29462  0.25950  0.03512]
         [-0.15472 -0.25472  0.40944]]
    """
    c, z = prepare_logits(logits, targets, sparse=False, **options)
    assert c.targets is not None
    a = c.weighted(c.smooth(c.targets))
    s, _ = softmax_and_lse(z)
    grad = s * jnp.sum(a, axis=-1, keepdims=True) - a
    return c.gradient(grad, None if c.class_weights is None else c.class_sum(c.targets))


@same_arguments(loss.sparse_softmax_cross_entropy)
def sparse_softmax_cross_entropy(
    logits, labels, *, z_loss, **options
) -> Float[Array, " *batch classes"]:
    r"""Gradient of `jaxce.sparse_softmax_cross_entropy` with respect to ``logits``.

    With $s = \operatorname{softmax}(z)$, $\operatorname{lse} = \log\sum_c e^{z_c}$
    (over the classes in play, $m_c = 1$), class weights $w$, smoothing
    $\varepsilon$ over $K$ classes and z-loss $\lambda$, the per-element target
    $a_c = (1 - \varepsilon) w_y [c = y] + \tfrac{\varepsilon}{K} w_c m_c$ gives

    $$\frac{\partial R}{\partial z_{nj}} = c_n \Big(s_{nj}
        \big(\textstyle\sum_c a_{nc} + 2 \lambda \operatorname{lse}_n\big)
        - a_{nj}\Big)$$

    i.e. ``softmax(z) - onehot(y)`` in the plain case, plus
    ``2 * lambda * lse * softmax(z)`` for the z-loss. $c_n$ is the reduction's
    derivative: ``weights_n`` (``"sum"``, ``"none"``: gradient of the sum),
    divided by $\sum_m \text{weights}_m w_{y_m}$ over present elements for
    ``"mean"`` (PyTorch's weighted mean), by their count for
    ``"sum_over_batch_size"``; times $1/\ln(\text{base})$; 0 for elements that
    ``ignore_index`` or ``where`` remove. Same arguments as the loss.

    Returns:
        $\partial R / \partial z$, the shape and dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> labels = jnp.array([0, 2])
        >>> print(jaxce.closed_form.sparse_softmax_cross_entropy(logits, labels))
        [[-0.14731  0.12975  0.01756]
         [ 0.02264  0.02264 -0.04528]]
    """
    check_nonneg(z_loss, "z_loss")
    c, z = prepare_logits(logits, labels, sparse=True, **options)
    on, off, total = c.sparse_targets()
    s, lse = softmax_and_lse(z)
    total = total[..., None]
    if not is_static_zero(z_loss):
        total = total + 2 * jnp.asarray(z_loss, c.dtype) * lse
    grad = s * total - jnp.where(c.is_label(), on[..., None], jnp.zeros((), c.dtype))
    if off is not None:
        grad = grad - off
    return c.gradient(grad, c.label_weights())
