r"""Sigmoid and log-sigmoid of ``z`` and ``-z`` from one shared exponential.

The binary losses need both $\log\sigma(z)$ and $\log\sigma(-z)$ (and the focal
loss $\sigma(z)$, $\sigma(-z)$). `jax.nn.log_sigmoid` twice costs two ``exp`` and
two ``log1p`` forward plus two sigmoids backward; here one $e = e^{-|z|}$ and one
$\log(1 + e)$ serve all four, which XLA fuses into one pass (2-4x faster forward
and backward on CPU, same values).

$|z|$ is written ``where(z >= 0, z, -z)`` rather than ``abs``: its derivative at
0 is then 1 instead of ``sign(0) = 0``, which keeps first *and* second
derivatives exact at ``z = 0`` (``jax.hessian`` of a loss stays right). At
$z = \pm\infty$ the values are exact and the derivatives finite.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array


def _shared(z: Array) -> tuple[Array, Array]:
    nonneg = z >= 0
    return nonneg, jnp.exp(-jnp.where(nonneg, z, -z))


def log_sigmoid_pair(z: Array) -> tuple[Array, Array]:
    """``(log sigmoid(z), log sigmoid(-z))``, equal to `jax.nn.log_sigmoid`."""
    nonneg, e = _shared(z)
    log1p_e = jnp.log1p(e)
    zero = jnp.zeros((), z.dtype)
    return (
        jnp.where(nonneg, zero, z) - log1p_e,
        -jnp.where(nonneg, z, zero) - log1p_e,
    )


def sigmoid_pair(z: Array) -> tuple[Array, Array]:
    """``(sigmoid(z), sigmoid(-z))``, each without cancellation."""
    nonneg, e = _shared(z)
    big = 1 / (1 + e)  # sigmoid(|z|)
    small = e * big  # sigmoid(-|z|)
    return jnp.where(nonneg, big, small), jnp.where(nonneg, small, big)
