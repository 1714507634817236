"""Closed-form parameter gradients of the fused linear -> cross-entropy.

With ``z = softcap(hidden @ weight.T + bias)``, ``s = softmax(z)`` and the
reduction coefficient ``c_n = dR / dL_n`` (0 for absent tokens), the gradient
with respect to the logits is, per token,

    dz[n, c] = c_n * (s[n, c] * (a_n + eps / V * sum(w) + 2 * lam * lse_n)
                      - a_n * [c == y_n] - eps / V * w_c)

with ``a_n = (1 - eps) * w[y_n]``; then ``dH = dz @ W``, ``dW = dz.T @ H``,
``db = sum_n dz`` (through ``1 - (z / cap)**2`` with a soft cap), token chunk by
token chunk: the kernel of the fused loss's gradient-in-forward pass, three
matmuls in all.
"""

from __future__ import annotations

from jaxtyping import Array

from .. import _fused as fused
from .._core import make_reducer
from .._fused._ce_kernels import CERows
from .._fused._cross_entropy import ce_coefficients, ce_params
from .._fused._engine import Vocab, prepare_call
from .._fused._engine._rows import Want, row_pass
from ._arguments import same_arguments


@same_arguments(fused.linear_softmax_cross_entropy)
def linear_softmax_cross_entropy(
    hidden, weight, labels, *, mesh, batch_axis, vocab_axis, **options
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

    It takes the arguments of `jaxce.linear_softmax_cross_entropy` and runs on
    one device: ``mesh``, ``batch_axis`` and ``vocab_axis`` must be None.

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
        ``d_bias`` is None when ``bias`` is None; ``d_weight`` has the shape
        of ``weight`` (``(D, V)`` with ``weight_layout="dv"``). Sample
        ``weights`` and a ``normalizer`` enter through the reduction's
        coefficients ``c_n = w_n / Z``. (No gradient for ``class_weights``,
        ``weights`` or ``normalizer``.)

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
    if (mesh, batch_axis, vocab_axis) != (None, None, None):
        raise ValueError(
            "closed_form.linear_softmax_cross_entropy runs on one device: `mesh`, "
            "`batch_axis` and `vocab_axis` must be None."
        )
    opts = dict(options)
    ce = {k: opts.pop(k) for k in ("class_weights", "label_smoothing", "z_loss")}
    red = {k: opts.pop(k) for k in ("weights", "normalizer", "reduction")}
    call = prepare_call(hidden, weight, labels, **opts)
    params = ce_params(call, **ce)
    reducer = make_reducer(
        call.present, call.dtype, call.head.hidden.dtype, base=None, **red
    )
    coef = ce_coefficients(call, reducer, params)
    head = call.head
    out = row_pass(
        CERows(call.num_classes), call.plan(), head, (), params, call.labels,
        call.present, (), coef, Want(bias=head.bias is not None, params=False),
        weight_layout=call.weight_layout, softcap=call.softcap, vocab=Vocab(),
    )  # fmt: skip
    assert out.grads is not None
    dh, dw, db = out.grads
    db = None if db is None or head.bias is None else db.astype(head.bias.dtype)
    return dh.astype(head.hidden.dtype), dw.astype(head.weight.dtype), db
