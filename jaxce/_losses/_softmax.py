"""Softmax cross-entropy from logits: soft/one-hot targets and integer labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from .._core import (
    Categorical,
    IndexLike,
    Number,
    Reduction,
    ScalarLike,
    check_nonneg,
    is_static_zero,
    prepare_categorical,
    shifted_log_softmax,
)


def prepare_logits(
    logits, y, *, sparse: bool, ignore_index=None, **options
) -> tuple[Categorical, Array]:
    """Check a softmax loss's arguments; the classes-last logits to use.

    Classes a per-class ``where`` removes get ``-inf`` logits; absent rows 0.
    """
    c = prepare_categorical(
        logits, y, name="logits", sparse=sparse, ignore_index=ignore_index, **options
    )
    return c, c.keep(c.x, -jnp.inf)


def softmax_cross_entropy(
    logits: Float[ArrayLike, " *batch classes"],
    targets: Real[ArrayLike, " *batch classes"],
    *,
    axis: int = -1,
    class_weights: Float[ArrayLike, " num_classes"] | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    label_smoothing: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Softmax cross-entropy between logits and target distributions.

    Per element (one slice along ``axis``), with class weights $w$ (default 1) and
    targets $t$ smoothed to $(1 - \varepsilon) t + \varepsilon / K$:

    $$L = -\sum_c w_c\, t_c \log \operatorname{softmax}(z)_c$$

    computed in log space after subtracting the row maximum (exact to a few
    ulps of the loss at any logit offset, as `sparse_softmax_cross_entropy`).
    The gradient with respect to the targets is $-w_c \log
    \operatorname{softmax}(z)_c$ (times the smoothing's $1 - \varepsilon$ and the
    reduction's coefficient), also where $t_c = 0$; where $t_c = 0$ and the
    logit is ``-inf`` (no derivative exists: the loss jumps to $+\infty$ for any
    $t_c > 0$) it is 0. For ``reduction="mean"`` an element weighs
    ``weights * sum_c w_c t_c`` (unsmoothed $t$): for one-hot targets that is
    PyTorch's ``weight[target]`` denominator, so the one-hot result equals
    `sparse_softmax_cross_entropy`. PyTorch's probability-target
    ``F.cross_entropy`` (which divides by N) is ``reduction="sum_over_batch_size"``.

    Targets of 0 on classes whose logit is ``-inf`` contribute exactly 0 (finite
    loss and gradient). A ``where`` with as many dimensions as ``logits`` removes
    classes from the softmax and from $K$ (as in optax); any other ``where`` is a
    per-element mask of the loss shape.

    Args:
        logits: unnormalised scores, classes along ``axis``.
        targets: target distributions (one-hot or soft), the shape of ``logits``.
        axis: the class axis (``1`` for PyTorch's ``(N, C, d1, ...)`` layout).
        class_weights: ``(classes,)`` per-class weights $w$.
        weights: per-element sample weights, broadcast to the loss shape.
        label_smoothing: $\varepsilon \in [0, 1)$.
        where: per-element mask (loss shape) or per-class mask (logits shape).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient accumulation:
            give every microbatch the whole batch's total).
        base: log base of the result (``None``: nats, ``2``: bits).

    Returns:
        The loss: shape ``*batch`` for ``reduction="none"`` (absent elements are 0),
        else a scalar; dtype of ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> targets = jnp.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
        >>> print(jaxce.softmax_cross_entropy(logits, targets, reduction="none"))
        [0.34901 1.59492]
        >>> print(jaxce.softmax_cross_entropy(logits, targets, label_smoothing=0.1))
        1.06363

    References:
        PyTorch ``torch.nn.functional.cross_entropy``;
        Szegedy et al., *Rethinking the Inception Architecture*, 2016
        (label smoothing), https://arxiv.org/abs/1512.00567.
    """
    c, z = prepare_logits(
        logits, targets, sparse=False, axis=axis, where=where,
        class_weights=class_weights, label_smoothing=label_smoothing,
        weights=weights, reduction=reduction, base=base,
        normalizer=normalizer,
    )  # fmt: skip
    shifted, log_norm = shifted_log_softmax(z)
    return c.reduce(*c.dense_nll(shifted - log_norm[..., None]))


def sparse_softmax_cross_entropy(
    logits: Float[ArrayLike, " *batch classes"],
    labels: Int[ArrayLike, "..."],
    *,
    axis: int = -1,
    class_weights: Float[ArrayLike, " num_classes"] | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    ignore_index: IndexLike | None = None,
    label_smoothing: ScalarLike = 0.0,
    z_loss: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Softmax cross-entropy with integer class labels.

    Per element, with $\operatorname{lse} = \log\sum_c e^{z_c}$, class weights $w$
    and smoothing $\varepsilon$ over $K$ classes:

    $$L = (1 - \varepsilon)\, w_y (\operatorname{lse} - z_y)
        + \frac{\varepsilon}{K} \sum_c w_c (\operatorname{lse} - z_c)
        + \lambda\, \operatorname{lse}^2$$

    The last term is the z-loss (PaLM) with ``z_loss`` $\lambda$. With
    ``reduction="mean"`` the result is ``sum(weights * L) / sum(weights * w_y)``
    over present elements: exactly PyTorch ``F.cross_entropy(weight=,
    ignore_index=, label_smoothing=)``. Elements whose label is ``ignore_index``
    or that ``where`` masks are absent: 0 in ``"none"``, left out of every
    denominator; if none is present the loss is 0 with zero gradient.

    A present label outside ``[0, K)`` makes that element's loss (and gradient)
    NaN rather than picking a wrapped class; `jaxce.validate` turns it into an
    error.

    Without smoothing the softmax is never materialised. ``lse - z_y`` is formed
    as $\log\sum_c e^{z_c - m} - (z_y - m)$ with $m = \max_c z_c$, so it is
    exact to a few ulps of the loss at any logit offset (``logsumexp(z) - z_y``
    would lose ulps of $|z|$: ``[1e5, 1e5 - 1, 0]`` gives 0.31326, not 0.3125).
    ``-inf`` logits on non-target classes give a finite loss and gradient.

    Args:
        logits: unnormalised scores, classes along ``axis``.
        labels: integer class indices, the shape of ``logits`` without ``axis``.
        axis: the class axis (``1`` for PyTorch's ``(N, C, d1, ...)`` layout).
        class_weights: ``(classes,)`` per-class weights $w$.
        weights: per-element sample weights, broadcast to the loss shape.
        ignore_index: label value marking absent elements (PyTorch ``-100``).
        label_smoothing: $\varepsilon \in [0, 1)$.
        z_loss: $\lambda \ge 0$, weight of the ``lse**2`` regulariser.
        where: per-element mask (loss shape) or per-class mask (logits shape).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient accumulation:
            give every microbatch the whole batch's total).
        base: log base of the result (``None``: nats, ``2``: bits).

    Returns:
        The loss, shape of ``labels`` for ``"none"`` else a scalar; dtype of
        ``logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
        >>> labels = jnp.array([0, 2])
        >>> print(jaxce.sparse_softmax_cross_entropy(logits, labels, reduction="none"))
        [0.34901 0.09492]
        >>> print(jaxce.sparse_softmax_cross_entropy(
        ...     logits, jnp.array([0, -100]), ignore_index=-100))
        0.34901

    References:
        PyTorch ``torch.nn.functional.cross_entropy``; Chowdhery et al., *PaLM*,
        2022 (z-loss), https://arxiv.org/abs/2204.02311.
    """
    check_nonneg(z_loss, "z_loss")
    c, z = prepare_logits(
        logits, labels, sparse=True, ignore_index=ignore_index, axis=axis,
        where=where, class_weights=class_weights, label_smoothing=label_smoothing,
        weights=weights, reduction=reduction, base=base,
        normalizer=normalizer,
    )  # fmt: skip
    # Differences of logits after the row maximum m is subtracted: lse - z_y
    # as log_norm - (z_y - m) (logsumexp(z) - z_y loses |z| ulps).
    shifted, log_norm = shifted_log_softmax(z)
    loss, denom = c.sparse_nll(
        c.take(shifted) - log_norm, lambda: shifted - log_norm[..., None]
    )
    if not is_static_zero(z_loss):
        lse = jax.nn.logsumexp(z, axis=-1)
        loss = loss + jnp.asarray(z_loss, c.dtype) * jnp.square(lse)
    return c.reduce(loss, denom)
