"""Closed-form logits gradient of the per-token statistics (`linear_token_stats`).

For ``R = sum_n (a_n logprob_n + b_n H_n + l_n lse_n)`` of the tempered logits
``z = softcap(x) / tau`` (``p = softmax(z)``, ``E = sum_c p_c z_c``):

    dR/dz_c = a ([c = y] - p_c) - b p_c (z_c - E) + l p_c

then ``dR/dx = dR/dz / tau * (1 - tanh(x / cap)**2)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import (
    Number,
    ScalarLike,
    as_float_input,
    broadcast_to_elements,
    check_integer_labels,
    compute_dtype,
    element_mask,
    is_static_zero,
    nan_where,
    out_of_range,
)
from .._fused._engine import check_softcap, check_temperature


def token_stats_logits_grad(
    logits: Float[ArrayLike, " *batch vocab"],
    labels: Int[ArrayLike, " *batch"],
    *,
    logprob_weight: ScalarLike | Float[ArrayLike, " *batch"] = 0.0,
    entropy_weight: ScalarLike | Float[ArrayLike, " *batch"] = 0.0,
    logsumexp_weight: ScalarLike | Float[ArrayLike, " *batch"] = 0.0,
    temperature: Number = 1.0,
    softcap: Number | None = None,
    where: Bool[ArrayLike, " *batch"] | None = None,
) -> Float[Array, " *batch vocab"]:
    r"""Gradient of a weighted sum of per-token statistics w.r.t. the logits.

    The closed form of the backward of `jaxce.linear_token_stats`, on explicit
    logits $x$ (``hidden @ weight.T + bias``, classes last): the gradient of

    $$R = \sum_n \big(a_n\, \text{logprob}_n + b_n H_n
        + l_n \operatorname{lse}_n\big)$$

    over present tokens, with $z = c \tanh(x / c) / \tau$, $p =
    \operatorname{softmax}(z)$, $\text{logprob}_n = z_{y_n} -
    \operatorname{lse}_n$, $H_n = \operatorname{lse}_n - E_n$ and $E_n =
    \sum_c p_c z_c$:

    $$\frac{\partial R}{\partial x_{nc}} = \Big(a_n ([c = y_n] - p_{nc})
        - b_n\, p_{nc} (z_{nc} - E_n) + l_n\, p_{nc}\Big)
        \cdot \frac{1}{\tau} \cdot \big(1 - \tanh^2(x_{nc} / c)\big)$$

    (the last factor only with a soft cap). The parameter gradients of the
    fused function follow by the chain rule: $\bar h = \bar x W$,
    $\bar W = \bar x^\top h$, $\bar b = \sum_n \bar x_n$.

    Args:
        logits: ``(..., V)`` logits $x$ before the soft cap and the temperature.
        labels: ``(...)`` integer tokens. A present label outside ``[0, V)``
            makes its row NaN when ``logprob_weight`` is given (not statically
            0), as the gradient of the NaN ``logprob`` of
            `jaxce.linear_token_stats`.
        logprob_weight: $a$, a scalar or per-token array (e.g. advantages),
            broadcast to ``labels``; 0 (default): logprob is not in $R$.
        entropy_weight: $b$ (e.g. an entropy-bonus coefficient).
        logsumexp_weight: $l$.
        temperature: $\tau > 0$.
        softcap: $c > 0$ or None.
        where: ``(...)`` boolean; False tokens are absent (zero rows).

    Returns:
        $\partial R / \partial x$, the shape and dtype of ``logits`` (computed in
        float32 for bf16 / fp16).

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> x = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> y = jnp.array([0, 2])
        >>> adv = jnp.array([1.0, -2.0])
        >>> g = jaxce.closed_form.token_stats_logits_grad(
        ...     x, y, logprob_weight=adv, entropy_weight=0.1)
        >>> print(g)
        [[ 0.26888 -0.24301 -0.02586]
         [ 0.10291  0.10291 -0.20582]]
        >>> def objective(x):
        ...     lp = jax.nn.log_softmax(x)
        ...     ent = -jnp.sum(jnp.exp(lp) * lp, axis=-1)
        ...     return jnp.sum(adv * lp[jnp.arange(2), y] + 0.1 * ent)
        >>> print(jax.grad(objective)(x))
        [[ 0.26888 -0.24301 -0.02586]
         [ 0.10291  0.10291 -0.20582]]
    """
    tau = check_temperature(temperature)
    cap = check_softcap(softcap)
    x = as_float_input(logits, "logits")
    labels = jnp.asarray(labels)
    check_integer_labels(labels)
    if x.ndim < 1 or labels.shape != x.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `logits` {x.shape} without its last "
            f"(class) axis, got {labels.shape}."
        )
    shape, v = labels.shape, x.shape[-1]
    cdt = compute_dtype(x.dtype)
    present = element_mask(where, shape)
    invalid = present & out_of_range(labels, v)
    labels = jnp.where(present & ~invalid, labels, 0)
    a, b, el = (
        broadcast_to_elements(w, shape, name, cdt)[..., None]
        for w, name in [
            (logprob_weight, "logprob_weight"),
            (entropy_weight, "entropy_weight"),
            (logsumexp_weight, "logsumexp_weight"),
        ]
    )
    if not is_static_zero(logprob_weight):
        a = nan_where(invalid[..., None], a)
    z = x.astype(cdt)
    if cap is not None:
        z = jnp.asarray(cap, cdt) * jnp.tanh(z / jnp.asarray(cap, cdt))
    zero = jnp.zeros((), cdt)
    m = jnp.max(z, axis=-1, keepdims=True)
    d = (z - jnp.where(jnp.isfinite(m), m, zero)) / jnp.asarray(tau, cdt)
    e = jnp.exp(d)
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = e / total
    logp = jnp.where(p > 0, d - jnp.log(total), zero)  # 0 where z = -inf
    entropy = -jnp.sum(p * logp, axis=-1, keepdims=True)  # u_c - E = log p_c + H
    cls = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    onehot = cls == labels.astype(jnp.int32)[..., None]
    grad = jnp.where(onehot, a, zero) + (el - a) * p - b * p * (logp + entropy)
    grad = grad / jnp.asarray(tau, cdt)
    if cap is not None:
        grad = grad * (1 - jnp.square(z / jnp.asarray(cap, cdt)))
    return jnp.where(present[..., None], grad, zero).astype(x.dtype)
