"""`closed_form.linear_model_grads` against `eqx.filter_grad` and ``X.T @ (p - y)``."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import closed_form

R = np.random.default_rng(0)
X = R.standard_normal((12, 4))
Y_BIN = (R.uniform(size=12) < 0.5).astype(np.float64)
Y_INT = R.integers(0, 3, 12)


def as64(model):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)


def autodiff(model, x, y, loss, **opts):
    @eqx.filter_jit
    @eqx.filter_grad
    def g(m):
        return loss(jax.vmap(m)(x), y, **opts)

    return g(model)


def assert_trees_close(a, b, rtol):
    assert type(a) is type(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * 1e-2)


def test_logistic_regression_textbook_and_autodiff():
    with jax.enable_x64(True):
        model = as64(jaxce.models.LogisticRegression(4, key=jax.random.key(0)))
        x, y = jnp.asarray(X), jnp.asarray(Y_BIN)
        grads = eqx.filter_jit(closed_form.linear_model_grads)(model, x, y)
        p = 1 / (1 + np.exp(-(X @ np.asarray(model.weight) + float(model.bias))))
        np.testing.assert_allclose(grads.weight, X.T @ (p - Y_BIN) / 12, rtol=1e-10)
        np.testing.assert_allclose(grads.bias, np.mean(p - Y_BIN), rtol=1e-10)
        loss = jaxce.sigmoid_binary_cross_entropy
        assert_trees_close(grads, autodiff(model, x, y, loss), 1e-10)
        opts = dict(weights=jnp.asarray(R.uniform(size=12)), pos_weight=2.0)
        mine = closed_form.linear_model_grads(model, x, y, **opts)
        assert_trees_close(mine, autodiff(model, x, y, loss, **opts), 1e-10)


@pytest.mark.parametrize("targets", ["labels", "distributions"])
def test_softmax_regression_matches_autodiff(targets):
    with jax.enable_x64(True):
        model = as64(jaxce.models.SoftmaxRegression(4, 3, key=jax.random.key(1)))
        x = jnp.asarray(X)
        if targets == "labels":
            y, loss = jnp.asarray(Y_INT), jaxce.sparse_softmax_cross_entropy
            mask = (R.uniform(size=(12, 3)) < 0.6) | (np.eye(3)[Y_INT] > 0)
            opts = dict(class_weights=jnp.array([1.0, 2.0, 0.5]), z_loss=1e-2)
            opts["where"] = jnp.asarray(mask)  # per-class (N, C) mask
        else:
            y, loss = (
                jnp.asarray(np.eye(3)[Y_INT] * 0.8 + 0.2 / 3),
                jaxce.softmax_cross_entropy,
            )
            opts = dict(class_weights=jnp.array([1.0, 2.0, 0.5]))
        opts.update(label_smoothing=0.1, reduction="sum_over_batch_size")
        mine = closed_form.linear_model_grads(model, x, y, **opts)
        assert isinstance(mine, jaxce.models.SoftmaxRegression)
        assert_trees_close(mine, autodiff(model, x, y, loss, **opts), 1e-10)


def test_softmax_regression_textbook_float32():
    model = jaxce.models.SoftmaxRegression(4, 3, key=jax.random.key(2))
    x = jnp.asarray(X, jnp.float32)
    grads = closed_form.linear_model_grads(model, x, jnp.asarray(Y_INT))
    z = X @ np.asarray(model.weight, np.float64).T + np.asarray(model.bias)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(3)[Y_INT]) / 12
    assert grads.weight.dtype == jnp.float32
    np.testing.assert_allclose(grads.weight, d.T @ X, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads.bias, d.sum(0), rtol=1e-5, atol=1e-7)


def test_bad_input():
    model = jaxce.models.LogisticRegression(4, key=jax.random.key(0))
    with pytest.raises((ValueError, TypeError), match="x"):
        closed_form.linear_model_grads(model, jnp.zeros((3, 5)), jnp.zeros(3))
    with pytest.raises(TypeError, match="axis"):
        closed_form.linear_model_grads(model, jnp.zeros((3, 4)), jnp.zeros(3), axis=0)
    with pytest.raises(TypeError, match="model"):
        closed_form.linear_model_grads(
            eqx.nn.Linear(4, 1, key=jax.random.key(0)),  # type: ignore[arg-type]
            jnp.zeros((3, 4)),
            jnp.zeros(3),
        )
