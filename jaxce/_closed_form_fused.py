"""Closed-form parameter gradients of the fused linear -> cross-entropy.

With ``z = softcap(hidden @ weight.T + bias)``, ``s = softmax(z)`` and the
reduction coefficient ``c_n`` (see ``jaxce._closed_form_reduction``), the
gradient with respect to the logits is, per token,

    dz[n, c] = c_n * (s[n, c] * (a_n + eps / V * sum(w) + 2 * lam * lse_n)
                      - a_n * [c == y_n] - eps / V * w_c)

with ``a_n = (1 - eps) * w[y_n]``; then ``dH = dz @ W``, ``dW = dz.T @ H``,
``db = sum_n dz`` (through ``1 - (z / cap)**2`` with a soft cap), token chunk by
token chunk: the kernel of the fused loss's forward rule
(``jaxce._fused_tokens.token_chunk_grads``), three matmuls in all.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._fused import prepare
from ._fused_tokens import Coefs, token_chunk_for, token_chunk_grads
from ._options import Number, Reduction, ScalarLike, is_static_zero


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
    sum) with respect to ``hidden``, ``weight`` and ``bias``, computed without
    autodiff, one token chunk (its full-vocabulary logits block, the same chunks
    as the fused loss's gradient pass) at a time, three matmuls in all. With
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

    Unlike every other `jaxce.closed_form` function, which returns the gradient
    with respect to its first argument only, this one deliberately returns the
    tuple ``(d_hidden, d_weight, d_bias)``: the fused loss exists to train the
    classifier, so ``d_weight`` is the point, and the three share one pass over
    the logits. To hold one entry against autodiff with
    `jaxce.compare_gradients` (which differentiates its first argument), wrap
    both functions with that parameter first and pick the entry, e.g. for
    ``weight``::

        loss = lambda w, h, y, **kw: jaxce.linear_softmax_cross_entropy(h, w, y, **kw)
        grad = lambda w, h, y, **kw: jaxce.closed_form.linear_softmax_cross_entropy(
            h, w, y, **kw)[1]
        jaxce.compare_gradients(loss, grad, weight, hidden, labels)

    (``examples/gradients.py`` prints such rows for ``hidden``, ``weight`` and
    ``bias``.) A present label outside ``[0, V)`` makes the gradients NaN, as
    in the fused loss.

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
        >>> loss = lambda w, h, y: jaxce.linear_softmax_cross_entropy(h, w, y)
        >>> grad = lambda w, h, y: jaxce.closed_form.linear_softmax_cross_entropy(
        ...     h, w, y)[1]
        >>> jaxce.compare_gradients(loss, grad, w, h, y).passed
        True
    """
    p = prepare(
        hidden, weight, labels, bias=bias, class_weights=class_weights,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, where=where, reduction=reduction, chunk_size=chunk_size,
    )  # fmt: skip
    dt = p.dtype
    eps = jnp.asarray(label_smoothing, dt) if p.need_sum else None
    static_zero = is_static_zero(z_loss)
    lam = None if static_zero else jnp.asarray(z_loss, dt)
    v = p.weight.shape[0]
    cf = Coefs(reduction, p.labels, p.present, p.class_weights, eps, v, dt, p.invalid)
    _, _, _, dh, dw, db, _ = token_chunk_grads(
        p.hidden, p.weight, p.bias, p.labels, p.class_weights,
        cf.coef, cf.a, cf.g0, cf.ek, lam,
        softcap=p.softcap, chunk_size=p.chunk_size,
        token_chunk=token_chunk_for(p.labels.shape[0], v), need_sum=False,
    )  # fmt: skip
    assert dh is not None and dw is not None
    db = None if db is None or p.bias is None else db.astype(p.bias.dtype)
    return dh.astype(p.hidden.dtype), dw.astype(p.weight.dtype), db
