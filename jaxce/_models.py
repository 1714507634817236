"""Classifiers as Equinox modules (one example in, logits out) and batch helpers."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real


class LogisticRegression(eqx.Module):
    r"""Binary logistic regression: $z = w \cdot x + b$, $p = \sigma(z)$.

    Attributes:
        weight: ``(in_features,)`` coefficients $w$.
        bias: scalar intercept $b$.

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> model = jaxce.models.LogisticRegression(3, key=jax.random.key(0))
        >>> print(model(jnp.ones(3)).shape)
        ()
    """

    weight: Float[Array, " in_features"]
    bias: Float[Array, ""]
    in_features: int = eqx.field(static=True)

    def __init__(self, in_features: int, *, key: PRNGKeyArray):
        lim = 1.0 / jnp.sqrt(in_features)
        self.weight = jax.random.uniform(key, (in_features,), minval=-lim, maxval=lim)
        self.bias = jnp.zeros(())
        self.in_features = in_features

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, ""]:
        return jnp.dot(self.weight, x) + self.bias


class SoftmaxRegression(eqx.Module):
    r"""Multinomial (softmax) regression: $z = W x + b$.

    Attributes:
        weight: ``(num_classes, in_features)`` coefficients $W$ (PyTorch layout).
        bias: ``(num_classes,)`` intercepts $b$.

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> model = jaxce.models.SoftmaxRegression(4, 3, key=jax.random.key(0))
        >>> print(model(jnp.ones(4)).shape)
        (3,)
    """

    weight: Float[Array, " num_classes in_features"]
    bias: Float[Array, " num_classes"]
    in_features: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(self, in_features: int, num_classes: int, *, key: PRNGKeyArray):
        lim = 1.0 / jnp.sqrt(in_features)
        self.weight = jax.random.uniform(
            key, (num_classes, in_features), minval=-lim, maxval=lim
        )
        self.bias = jnp.zeros((num_classes,))
        self.in_features = in_features
        self.num_classes = num_classes

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " num_classes"]:
        return self.weight @ x + self.bias


class MLPClassifier(eqx.Module):
    r"""Multi-layer perceptron: ``depth`` hidden ReLU layers of ``width`` units.

    $h_0 = x$, $h_{l} = \mathrm{relu}(W_l h_{l-1} + b_l)$ for $l = 1..depth$, and
    logits $z = W_{out} h_{depth} + b_{out}$. Layers are `equinox.nn.Linear`
    (weights ``(out, in)``, PyTorch's initialisation). ``depth=0`` is softmax
    regression.

    Attributes:
        layers: the ``depth + 1`` linear layers, input first.
        in_features, num_classes, width, depth: the hyperparameters (static).

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> model = jaxce.models.MLPClassifier(
        ...     4, 3, width=8, depth=2, key=jax.random.key(0))
        >>> print(model(jnp.ones(4)).shape, len(model.layers))
        (3,) 3
    """

    layers: tuple[eqx.nn.Linear, ...]
    in_features: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        width: int,
        depth: int,
        key: PRNGKeyArray,
    ):
        for name, value, low in [
            ("in_features", in_features, 1),
            ("num_classes", num_classes, 2),
            ("width", width, 1),
            ("depth", depth, 0),
        ]:
            if not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
        sizes = [in_features] + [width] * depth + [num_classes]
        keys = jax.random.split(key, depth + 1)
        self.layers = tuple(
            eqx.nn.Linear(n_in, n_out, key=k)
            for n_in, n_out, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.in_features = in_features
        self.num_classes = num_classes
        self.width = width
        self.depth = depth

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " num_classes"]:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


Classifier = LogisticRegression | SoftmaxRegression | MLPClassifier


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
