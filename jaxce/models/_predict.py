"""Batch helpers for classifiers that map one example to logits."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, Real


def _batch_logits(model: Callable, x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim != 2:
        raise ValueError(
            f"`x` must have shape (num_examples, features), got {x.shape}."
        )
    return jax.vmap(model)(x)


def predict_proba(
    model: Callable, x: Real[ArrayLike, " n in_features"]
) -> Float[Array, " n *classes"]:
    r"""Class probabilities for a batch: $\sigma(z)$ for a scalar logit, else softmax.

    Args:
        model: a classifier taking one example and returning a scalar logit
            (binary: the result is $P(y = 1)$, shape ``(n,)``) or ``(classes,)``
            logits (the result is ``(n, classes)``, rows summing to 1).
        x: ``(n, in_features)`` inputs.

    Returns:
        Probabilities, computed in at least float32.

    Examples:
        >>> import equinox as eqx, jax, jax.numpy as jnp, jaxce
        >>> model = jaxce.models.LogisticRegression(2, key=jax.random.key(0))
        >>> model = eqx.tree_at(lambda m: m.weight, model, jnp.array([1.0, -1.0]))
        >>> x = jnp.array([[0.0, 0.0], [2.0, 0.0]])
        >>> print(jaxce.models.predict_proba(model, x))
        [0.50000 0.88080]
    """
    z = _batch_logits(model, x)
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    return jax.nn.sigmoid(z) if z.ndim == 1 else jax.nn.softmax(z, axis=-1)


def predict(model: Callable, x: Real[ArrayLike, " n in_features"]) -> Int[Array, " n"]:
    """Predicted classes for a batch: ``logit > 0`` (binary) or the argmax.

    Args:
        model: a classifier as in `predict_proba`.
        x: ``(n, in_features)`` inputs.

    Returns:
        ``(n,)`` int32 class indices.

    Examples:
        >>> import equinox as eqx, jax, jax.numpy as jnp, jaxce
        >>> model = jaxce.models.SoftmaxRegression(2, 3, key=jax.random.key(0))
        >>> model = eqx.tree_at(lambda m: m.weight, model, jnp.eye(3, 2))
        >>> print(jaxce.models.predict(model, jnp.array([[1.0, 0.0], [0.0, 2.0]])))
        [0 1]
    """
    z = _batch_logits(model, x)
    if z.ndim == 1:
        return (z > 0).astype(jnp.int32)
    return jnp.argmax(z, axis=-1).astype(jnp.int32)
