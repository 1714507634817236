"""Closed-form parameter gradients of the fused linear -> cross-entropy.

With ``z = softcap(hidden @ weight.T + bias)``, ``s = softmax(z)`` and the
reduction coefficient ``c_n`` (see ``jaxce._closed_form_reduction``), the
gradient with respect to the logits is, per token,

    dz[n, c] = c_n * (s[n, c] * (a_n + eps / V * sum(w) + 2 * lam * lse_n)
                      - a_n * [c == y_n] - eps / V * w_c)

with ``a_n = (1 - eps) * w[y_n]``; then ``dH = dz @ W``, ``dW = dz.T @ H``,
``db = sum_n dz`` (through ``1 - (z / cap)**2`` with a soft cap), chunk by chunk.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._closed_form_reduction import reduction_coefficients
from ._fused import _stats, chunk_grads, prepare
from ._options import Number, Reduction, ScalarLike


def linear_softmax_cross_entropy(
    hidden: Float[ArrayLike, "_tokens _features"],
    weight: Float[ArrayLike, "_vocab _features"],
    labels: Int[ArrayLike, " _tokens"],
    *,
    bias: Float[ArrayLike, " _vocab"] | None = None,
    class_weights: Float[ArrayLike, " _vocab"] | None = None,
    ignore_index: int | None = None,
    label_smoothing: ScalarLike = 0.0,
    z_loss: ScalarLike = 0.0,
    softcap: Number | None = None,
    where: Bool[ArrayLike, " _tokens"] | None = None,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> tuple[Array, Array, Array | None]:
    r"""Gradients of `jaxce.linear_softmax_cross_entropy`, written out analytically.

    Returns the gradient of the reduced loss (for ``reduction="none"``: of its
    sum) with respect to ``hidden``, ``weight`` and ``bias``, computed block by
    block without autodiff and without materialising the logits. With
    $s = \operatorname{softmax}(z)$, class weights $w$, smoothing $\varepsilon$
    over $V$ classes, z-loss $\lambda$ and $a_n = (1 - \varepsilon) w_{y_n}$:

    $$\frac{\partial R}{\partial z_{nc}} = c_n \Big(s_{nc}\big(a_n
        + \tfrac{\varepsilon}{V}\textstyle\sum_k w_k + 2 \lambda
        \operatorname{lse}_n\big) - a_n [c = y_n]
        - \tfrac{\varepsilon}{V} w_c\Big)$$

    ($c_n$: the reduction's coefficient, 0 for absent tokens), times
    $1 - (z / \text{cap})^2$ with a soft cap; then $dH = dZ\,W$,
    $dW = dZ^\top H$, $db = \sum_n dZ_n$.

    Args:
        hidden, weight, labels, bias, class_weights, ignore_index,
        label_smoothing, z_loss, softcap, where, reduction, chunk_size: as
            `jaxce.linear_softmax_cross_entropy` (single device; no ``mesh``).

    Returns:
        A tuple ``(d_hidden, d_weight, d_bias)`` in the dtypes of the inputs;
        ``d_bias`` is None when ``bias`` is None. (No gradient for
        ``class_weights``.)

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
        >>> w = jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 1.0], [2.0, 0.0]])
        >>> y = jnp.array([0, 3, 2])
        >>> dh, dw, db = jaxce.closed_form.linear_softmax_cross_entropy(h, w, y)
        >>> print(dw[0], db)
        [-0.22948  0.21653] None
    """
    p = prepare(
        hidden, weight, labels, bias=bias, class_weights=class_weights,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, where=where, reduction=reduction, chunk_size=chunk_size,
    )  # fmt: skip
    dt = p.dtype
    lse, _, _ = _stats(
        p.hidden, p.weight, p.bias, p.labels, None,
        p.softcap, p.chunk_size, p.token_chunk, False,
    )  # fmt: skip
    w_y = None if p.class_weights is None else p.class_weights[p.labels]
    coef = reduction_coefficients(
        p.present, weights=None, denom_weights=w_y, reduction=reduction,
        base=None, dtype=dt,
    )  # fmt: skip
    a = jnp.ones_like(lse) if w_y is None else w_y
    g_lse = a
    g_sum = None
    if p.need_sum:
        eps = jnp.asarray(label_smoothing, dt)
        k = jnp.asarray(p.weight.shape[0], dt)
        total_w = k if p.class_weights is None else jnp.sum(p.class_weights)
        a = (1 - eps) * a
        g_lse = a + eps / k * total_w
        g_sum = -coef * (eps / k)
    if not (isinstance(z_loss, (int, float)) and z_loss == 0):
        g_lse = g_lse + 2 * jnp.asarray(z_loss, dt) * lse
    dh, dw, db, _ = chunk_grads(
        p.hidden, p.weight, p.bias, p.labels, p.class_weights, lse,
        coef * g_lse, -coef * a, g_sum,
        softcap=p.softcap, chunk_size=p.chunk_size, token_chunk=p.token_chunk,
    )  # fmt: skip
    db = None if db is None or p.bias is None else db.astype(p.bias.dtype)
    return dh.astype(p.hidden.dtype), dw, db
