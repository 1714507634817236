"""Information quantities between distributions: H(p), H(p, q), KL(p || q), PPL."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._options import (
    Number,
    as_float_input,
    check_same_shape,
    compute_dtype,
    log_base_factor,
    normalize_axis,
    safe_xlogy,
)
from ._softmax import sparse_softmax_cross_entropy


def _pair(p, q):
    p = as_float_input(p, "p")
    q = as_float_input(q, "q")
    check_same_shape(p, q, "p", "q")
    dtype = compute_dtype(p.dtype, q.dtype)
    return p.astype(dtype), q.astype(dtype), jnp.result_type(p.dtype, q.dtype)


def _log_where_p(p: Array, x: Array) -> Array:
    """``log(x)`` where ``p > 0``, and 0 elsewhere (so no ``0 * inf`` gradients)."""
    return jnp.log(jnp.where(p == 0, jnp.ones((), x.dtype), x))


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

    $0 \log 0 = 0$, with a finite gradient there.

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
    h = -jnp.sum(safe_xlogy(pc, _log_where_p(pc, pc)), axis=axis)
    return _finish(h, base, p.dtype)


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
    pp, qq, out = _pair(p, q)
    axis = normalize_axis(axis, pp.ndim, "p")
    h = -jnp.sum(safe_xlogy(pp, _log_where_p(pp, qq)), axis=axis)
    return _finish(h, base, out)


def kl_divergence(
    p: Float[ArrayLike, " *batch classes"],
    q: Float[ArrayLike, " *batch classes"],
    *,
    axis: int = -1,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Kullback-Leibler divergence $\sum_c p_c \log(p_c / q_c)$ along ``axis``.

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
    pp, qq, out = _pair(p, q)
    axis = normalize_axis(axis, pp.ndim, "p")
    terms = safe_xlogy(pp, _log_where_p(pp, pp)) - safe_xlogy(pp, _log_where_p(pp, qq))
    return _finish(jnp.sum(terms, axis=axis), base, out)


def perplexity(
    logits: Float[ArrayLike, " *batch classes"],
    labels: Int[ArrayLike, "..."],
    *,
    axis: int = -1,
    weights: Float[ArrayLike, "..."] | None = None,
    ignore_index: int | None = None,
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
