"""Information quantities between distributions: H(p), H(p, q), KL(p || q), PPL."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import (
    IndexLike,
    Number,
    as_float_input,
    check_same_shape,
    compute_dtype,
    log_base_factor,
    normalize_axis,
    xlogy,
)
from ._softmax import sparse_softmax_cross_entropy


def _pair(p, q, axis: int) -> tuple[Array, Array, int, jnp.dtype]:
    """``p`` and ``q`` in the compute dtype, the class axis and the result dtype."""
    p = as_float_input(p, "p")
    q = as_float_input(q, "q")
    check_same_shape(p, q, "p", "q")
    dtype = compute_dtype(p.dtype, q.dtype)
    axis = normalize_axis(axis, p.ndim, "p")
    return p.astype(dtype), q.astype(dtype), axis, jnp.result_type(p.dtype, q.dtype)


def _finish(value: Array, base: Number | None, out_dtype) -> Array:
    scale = log_base_factor(base)
    if scale != 1.0:
        value = value * jnp.asarray(scale, value.dtype)
    return value.astype(out_dtype)


def entropy(
    probs: Float[ArrayLike, " *batch classes"],
    *,
    axis: int = -1,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Shannon entropy $H(p) = -\sum_c p_c \log p_c$ along ``axis``.

    $0 \log 0 = 0$. The gradient is $\partial H / \partial p_c = -(1 + \log p_c)$;
    at $p_c = 0$ (where the one-sided derivative is $+\infty$) it is taken as 0,
    so the gradient through a softmax or sigmoid whose probability underflowed
    to 0 stays exact (its $\partial p_c$ factor is 0) instead of $0 \cdot \infty$
    = NaN, and the gradient identity of `cross_entropy` holds everywhere.

    Args:
        probs: distributions along ``axis``.
        axis: the class axis.
        base: log base (``None``: nats, ``2``: bits).

    Returns:
        One entropy per distribution: ``probs``' shape without ``axis``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> print(jaxce.entropy(jnp.array([0.5, 0.5, 0.0]), base=2))
        1.0
    """
    p = as_float_input(probs, "probs")
    axis = normalize_axis(axis, p.ndim, "probs")
    pc = p.astype(compute_dtype(p.dtype))
    return _finish(-jnp.sum(xlogy(pc, pc), axis=axis), base, p.dtype)


def cross_entropy(
    p: Float[ArrayLike, " *batch classes"],
    q: Float[ArrayLike, " *batch classes"],
    *,
    axis: int = -1,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Cross-entropy $H(p, q) = -\sum_c p_c \log q_c$ between distributions.

    $H(p, q) = H(p) + \mathrm{KL}(p \,\|\, q)$. Terms with $p_c = 0$ are 0 even
    where $q_c = 0$; a $q_c = 0$ under $p_c > 0$ gives $+\infty$.

    Gradients: $\partial H / \partial p_c = -\log q_c$ everywhere, $p_c = 0$
    included (as PyTorch and SciPy give; $+\infty$ where $q_c = 0 < p_c$), and
    $\partial H / \partial q_c = -p_c / q_c$, which is 0 where $p_c = 0$. At
    $p_c = q_c = 0$ the term jumps from 0 to $+\infty$ for any $p_c > 0$, so no
    derivative exists there; both partials are taken as 0. With the conventions
    of `entropy` and `kl_divergence` the identity holds for the gradients too:
    $\nabla_p H(p, q) = \nabla_p H(p) + \nabla_p \mathrm{KL}(p \,\|\, q)$.

    Args:
        p: the true distribution, classes along ``axis``.
        q: the model distribution, the shape of ``p``.
        axis: the class axis.
        base: log base (``None``: nats, ``2``: bits).

    Returns:
        One value per distribution: ``p``'s shape without ``axis``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> p = jnp.array([0.0, 1.0, 0.0])
        >>> print(jaxce.cross_entropy(p, jnp.array([0.05, 0.85, 0.10])))
        0.1625189
    """
    pp, qq, axis, out = _pair(p, q, axis)
    return _finish(-jnp.sum(xlogy(pp, qq), axis=axis), base, out)


def kl_divergence(
    p: Float[ArrayLike, " *batch classes"],
    q: Float[ArrayLike, " *batch classes"],
    *,
    axis: int = -1,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Kullback-Leibler divergence $\sum_c p_c \log(p_c / q_c)$ along ``axis``.

    Terms with $p_c = 0$ are 0; a $q_c = 0$ under $p_c > 0$ gives $+\infty$.
    Gradients: $\partial / \partial q_c = -p_c / q_c$ (0 where $p_c = 0$) and
    $\partial / \partial p_c = 1 + \log p_c - \log q_c$ for $p_c > 0$; at
    $p_c = 0$ (one-sided derivative $-\infty$) it is $-\log q_c$, the
    convention of `entropy`, so that
    $\nabla_p H(p, q) = \nabla_p H(p) + \nabla_p \mathrm{KL}$ holds everywhere.

    Args:
        p: the true distribution, classes along ``axis``.
        q: the model distribution, the shape of ``p``.
        axis: the class axis.
        base: log base (``None``: nats, ``2``: bits).

    Returns:
        One value per distribution: ``p``'s shape without ``axis``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> p = jnp.array([0.5, 0.5])
        >>> print(jaxce.kl_divergence(p, jnp.array([0.9, 0.1]), base=2))
        0.7369656
    """
    pp, qq, axis, out = _pair(p, q, axis)
    terms = xlogy(pp, pp) - xlogy(pp, qq)
    return _finish(jnp.sum(terms, axis=axis), base, out)


def perplexity(
    logits: Float[ArrayLike, " *batch classes"],
    labels: Int[ArrayLike, "..."],
    *,
    axis: int = -1,
    weights: Float[ArrayLike, "..."] | None = None,
    ignore_index: IndexLike | None = None,
    where: Bool[ArrayLike, "..."] | None = None,
) -> Float[Array, ""]:
    r"""Perplexity of integer labels under softmax logits: $\exp(\bar L)$.

    $\bar L$ is `sparse_softmax_cross_entropy` with ``reduction="mean"`` in nats
    (so the result does not depend on a log base), honouring ``weights``,
    ``ignore_index`` and ``where``. A uniform model over $K$ classes has
    perplexity $K$; with nothing present the result is 1.

    Args:
        logits: unnormalised scores, classes along ``axis``.
        labels: integer class indices, the shape of ``logits`` without ``axis``.
        axis: the class axis.
        weights: per-element weights.
        ignore_index: label value marking absent elements.
        where: per-element or per-class mask, as in the losses.

    Returns:
        A scalar, dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> print(jaxce.perplexity(jnp.zeros((2, 4)), jnp.array([1, 3])))
        4.0
    """
    logits = as_float_input(logits, "logits")
    # Computed in (at least) float32 and rounded once: exp would amplify a bf16 NLL.
    nll = sparse_softmax_cross_entropy(
        logits.astype(compute_dtype(logits.dtype)),
        labels,
        axis=axis,
        weights=weights,
        ignore_index=ignore_index,
        where=where,
        reduction="mean",
    )
    return jnp.exp(nll).astype(logits.dtype)
