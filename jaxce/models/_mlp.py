"""A multi-layer perceptron classifier with ReLU hidden layers."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._sizes import check_size


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
        in_features: int | np.integer,
        num_classes: int | np.integer,
        *,
        width: int | np.integer,
        depth: int | np.integer,
        key: PRNGKeyArray,
    ):
        in_features = check_size("in_features", in_features, 1)
        num_classes = check_size("num_classes", num_classes, 2)
        width = check_size("width", width, 1)
        depth = check_size("depth", depth, 0)
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
