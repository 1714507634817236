"""Softmax cross-entropy from logits: soft/one-hot targets and integer labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from ._categorical import (
    Classes,
    class_sum,
    dense_loss,
    sparse_loss,
)
from ._options import (
    Number,
    Reduction,
    ScalarLike,
    as_float_input,
    check_nonneg,
    compute_dtype,
    is_static_zero,
    reduce_loss,
)


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
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Softmax cross-entropy between logits and target distributions.

    Per element (one slice along ``axis``), with class weights $w$ (default 1) and
    targets $t$ smoothed to $(1 - \varepsilon) t + \varepsilon / K$:

    $$L = -\sum_c w_c\, t_c \log \operatorname{softmax}(z)_c$$

    computed with `jax.nn.log_softmax`. For ``reduction="mean"`` an element weighs
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
    logits = as_float_input(logits, "logits")
    targets = as_float_input(targets, "targets")
    dtype = compute_dtype(logits.dtype, targets.dtype)
    classes = Classes(logits, axis, where, "logits", dtype)
    t_raw = classes.check_targets(targets)
    cw = classes.class_weights(class_weights)
    z = classes.keep(classes.x, -jnp.inf)
    logp = jax.nn.log_softmax(z, axis=-1)
    t = classes.smooth(t_raw, label_smoothing)
    loss, denom = dense_loss(logp, t, t_raw, cw, classes)
    return reduce_loss(
        loss,
        present=classes.present,
        weights=weights,
        denom_weights=denom,
        reduction=reduction,
        base=base,
        out_dtype=logits.dtype,
    )


def sparse_softmax_cross_entropy(
    logits: Float[ArrayLike, " *batch classes"],
    labels: Int[ArrayLike, "..."],
    *,
    axis: int = -1,
    class_weights: Float[ArrayLike, " num_classes"] | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    ignore_index: int | None = None,
    label_smoothing: ScalarLike = 0.0,
    z_loss: ScalarLike = 0.0,
    where: Bool[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
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

    Without smoothing the softmax is never materialised (``lse - z_y``, as optax).
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
    logits = as_float_input(logits, "logits")
    labels = jnp.asarray(labels)
    check_nonneg(z_loss, "z_loss")
    dtype = compute_dtype(logits.dtype)
    classes = Classes(logits, axis, where, "logits", dtype)
    safe_labels = classes.check_labels(labels, ignore_index)
    cw = classes.class_weights(class_weights)
    z = classes.keep(classes.x, -jnp.inf)
    lse = jax.nn.logsumexp(z, axis=-1)
    z_y = jnp.take_along_axis(z, safe_labels[..., None], axis=-1)[..., 0]
    sum_logp = None
    if not is_static_zero(label_smoothing):
        logp = z - lse[..., None]
        sum_logp = class_sum(logp, cw, classes)
    loss, denom = sparse_loss(
        z_y - lse, sum_logp, cw, safe_labels, label_smoothing, classes
    )
    if not is_static_zero(z_loss):
        loss = loss + jnp.asarray(z_loss, dtype) * jnp.square(lse)
    loss = classes.poison_bad_labels(loss)
    return reduce_loss(
        loss,
        present=classes.present,
        weights=weights,
        denom_weights=denom,
        reduction=reduction,
        base=base,
        out_dtype=logits.dtype,
    )
