"""Closed-form parameter gradients of the linear models (chain rule via Xw + b)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real

from .._core import as_float_input
from ..models import LogisticRegression, SoftmaxRegression
from ._binary import sigmoid_binary_cross_entropy
from ._softmax import softmax_cross_entropy, sparse_softmax_cross_entropy


def _check_x(x: Array, in_features: int) -> None:
    if x.ndim != 2 or x.shape[1] != in_features:
        raise ValueError(
            f"`x` must have shape (num_examples, {in_features}) for this model, got "
            f"{x.shape}."
        )


def linear_model_grads(
    model: LogisticRegression | SoftmaxRegression,
    x: Float[ArrayLike, " n in_features"],
    y: Real[ArrayLike, " n *target"],
    **loss_options,
) -> LogisticRegression | SoftmaxRegression:
    r"""Gradient of a linear model's natural loss with respect to its parameters.

    The logits are $Z = X W^\top + b$ (one row per example) and $G = \partial R /
    \partial Z$ is the closed-form gradient of the loss on the logits
    (`jaxce.closed_form.sigmoid_binary_cross_entropy` for `LogisticRegression`;
    `jaxce.closed_form.sparse_softmax_cross_entropy` for `SoftmaxRegression` with
    integer ``y``, `jaxce.closed_form.softmax_cross_entropy` with ``(n, classes)``
    targets), computed on classes-first logits. By the chain rule

    $$\frac{\partial R}{\partial W} = G^\top X, \qquad
      \frac{\partial R}{\partial b} = \sum_n G_n$$

    which for the plain mean loss is the textbook ``X.T @ (p - y) / N`` and
    ``sum(p - y) / N``. ``loss_options`` (``weights``, ``class_weights``,
    ``label_smoothing``, ``z_loss``, ``pos_weight``, ``where``, ``reduction``,
    ...) are those of the loss, with the class axis last.

    Args:
        model: a `jaxce.models.LogisticRegression` or
            `jaxce.models.SoftmaxRegression`.
        x: ``(n, in_features)`` inputs.
        y: ``(n,)`` labels (0/1 or soft for logistic regression; integer classes
            for softmax regression) or ``(n, classes)`` target distributions.
        **loss_options: keyword options of the loss.

    Returns:
        A model of the same type whose ``weight`` and ``bias`` are the gradients
        (what ``eqx.filter_grad`` returns for the parameters).

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> model = jaxce.models.LogisticRegression(2, key=jax.random.key(0))
        >>> model = jax.tree_util.tree_map(jnp.zeros_like, model)
        >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
        >>> grads = jaxce.closed_form.linear_model_grads(
        ...     model, x, jnp.array([0.0, 0.0, 1.0, 1.0]))
        >>> print(grads.weight, grads.bias)
        [-1.00000 -1.00000] 0.0
    """
    x = as_float_input(x, "x")
    y = jnp.asarray(y)
    if "axis" in loss_options:
        raise TypeError("`axis` is not an option here: the class axis is last.")
    if isinstance(model, LogisticRegression):
        _check_x(x, model.in_features)
        z = x @ model.weight + model.bias
        g = sigmoid_binary_cross_entropy(z, y, **loss_options)
        gw, gb = g @ x, jnp.sum(g)
    elif isinstance(model, SoftmaxRegression):
        _check_x(x, model.in_features)
        # Classes-first logits (C, N): W @ X.T, then dW = G @ X is one plain matmul
        # (measured faster on CPU than the (N, C) layout).
        zt = model.weight @ x.T + model.bias[:, None]
        opts: dict[str, Any] = dict(loss_options)
        if opts.get("where") is not None and jnp.ndim(opts["where"]) == 2:
            opts["where"] = jnp.asarray(opts["where"]).T  # a per-class (N, C) mask
        if jnp.issubdtype(y.dtype, jnp.integer):
            g = sparse_softmax_cross_entropy(zt, y, axis=0, **opts)
        else:
            g = softmax_cross_entropy(zt, y.T, axis=0, **opts)
        gw, gb = g @ x, jnp.sum(g, axis=1)
    else:
        raise TypeError(
            "`model` must be a LogisticRegression or SoftmaxRegression, got "
            f"{type(model).__name__}."
        )
    return eqx.tree_at(
        lambda m: (m.weight, m.bias),
        model,
        (gw.astype(model.weight.dtype), gb.astype(model.bias.dtype)),
    )
