"""Linear classifiers: binary logistic and multinomial (softmax) regression."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._sizes import check_size


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

    def __init__(self, in_features: int | np.integer, *, key: PRNGKeyArray):
        in_features = check_size("in_features", in_features, 1)
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

    def __init__(
        self,
        in_features: int | np.integer,
        num_classes: int | np.integer,
        *,
        key: PRNGKeyArray,
    ):
        in_features = check_size("in_features", in_features, 1)
        num_classes = check_size("num_classes", num_classes, 2)
        lim = 1.0 / jnp.sqrt(in_features)
        self.weight = jax.random.uniform(
            key, (num_classes, in_features), minval=-lim, maxval=lim
        )
        self.bias = jnp.zeros((num_classes,))
        self.in_features = in_features
        self.num_classes = num_classes

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " num_classes"]:
        return self.weight @ x + self.bias
