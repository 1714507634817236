"""jaxce.models: shapes, forward passes against NumPy, predict / predict_proba."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng

import jaxce
from jaxce.models import (
    LogisticRegression,
    MLPClassifier,
    SoftmaxRegression,
    predict,
    predict_proba,
)


def _x(n=5, d=4, seed=0):
    return rng(seed).standard_normal((n, d)).astype(np.float32)


def _np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def test_linear_layouts_unchanged():
    lr = LogisticRegression(4, key=jax.random.key(0))
    sr = SoftmaxRegression(4, 3, key=jax.random.key(0))
    assert lr.weight.shape == (4,) and lr.bias.shape == ()
    assert sr.weight.shape == (3, 4) and sr.bias.shape == (3,)


def test_mlp_forward_matches_numpy():
    model = MLPClassifier(4, 3, width=6, depth=2, key=jax.random.key(1))
    x = _x()
    h = x.astype(np.float64)
    for layer in model.layers[:-1]:
        h = np.maximum(h @ np.asarray(layer.weight).T + np.asarray(layer.bias), 0)
    last = model.layers[-1]
    expected = h @ np.asarray(last.weight).T + np.asarray(last.bias)
    got = jax.vmap(model)(jnp.asarray(x))
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_structure(depth):
    model = MLPClassifier(5, 4, width=7, depth=depth, key=jax.random.key(0))
    assert len(model.layers) == depth + 1
    shapes = [layer.weight.shape for layer in model.layers]
    assert shapes[0][1] == 5 and shapes[-1][0] == 4
    assert all(s == (7, 7) for s in shapes[1:-1])
    assert model(jnp.ones(5)).shape == (4,)


@pytest.mark.parametrize(
    "name, value", [("in_features", 0), ("num_classes", 1), ("width", 0), ("depth", -1)]
)
def test_mlp_bad_hyperparameters(name, value):
    kwargs = dict(in_features=3, num_classes=3, width=4, depth=1)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        MLPClassifier(**kwargs, key=jax.random.key(0))


def test_sizes_accept_numpy_integers_and_refuse_bools():
    key = jax.random.key(0)
    mlp = MLPClassifier(np.int64(3), np.int32(4), width=np.int64(5), depth=np.int8(1),
                        key=key)  # fmt: skip
    assert (mlp.in_features, mlp.num_classes, mlp.width, mlp.depth) == (3, 4, 5, 1)
    assert all(type(v) is int for v in (mlp.in_features, mlp.width, mlp.depth))
    assert SoftmaxRegression(np.int64(3), np.int64(2), key=key).num_classes == 2
    assert type(LogisticRegression(np.int64(3), key=key).in_features) is int
    with pytest.raises(TypeError, match="`width` must be an int >= 1, got True"):
        MLPClassifier(3, 4, width=True, depth=1, key=key)
    with pytest.raises(TypeError, match="in_features"):
        LogisticRegression(2.0, key=key)
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 2, got 1"):
        SoftmaxRegression(3, 1, key=key)


def test_predict_proba_binary_is_sigmoid_of_logit():
    model = LogisticRegression(4, key=jax.random.key(2))
    model = eqx.tree_at(lambda m: m.bias, model, jnp.asarray(0.3))
    x = _x()
    z = x.astype(np.float64) @ np.asarray(model.weight, np.float64) + 0.3
    p = predict_proba(model, x)
    assert p.shape == (5,)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-5)
    np.testing.assert_array_equal(predict(model, x), (z > 0).astype(np.int32))


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_predict_proba_multiclass(kind):
    key = jax.random.key(3)
    if kind == "softmax":
        model = SoftmaxRegression(4, 3, key=key)
    else:
        model = MLPClassifier(4, 3, width=5, depth=1, key=key)
    x = _x(n=8)
    logits = np.asarray(jax.vmap(model)(jnp.asarray(x)), np.float64)
    p = predict_proba(model, x)
    assert p.shape == (8, 3)
    np.testing.assert_allclose(p, _np_softmax(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.sum(p, -1), 1.0, rtol=1e-6)
    labels = predict(model, x)
    assert labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, np.argmax(logits, -1))


def test_predict_proba_needs_a_batch():
    model = SoftmaxRegression(4, 3, key=jax.random.key(0))
    # ValueError from jaxce; TypeError when jaxtyping's runtime checks are on.
    with pytest.raises((ValueError, TypeError)):
        predict_proba(model, jnp.ones(4))
    with pytest.raises(ValueError, match="num_examples"):
        jaxce.models._predict._batch_logits(model, jnp.ones(4))


def test_models_work_with_grad_and_jit():
    model = MLPClassifier(4, 3, width=5, depth=1, key=jax.random.key(0))
    x, y = jnp.asarray(_x()), jnp.array([0, 1, 2, 0, 1])

    @eqx.filter_jit
    def loss(m):
        return jaxce.sparse_softmax_cross_entropy(jax.vmap(m)(x), y)

    grads = eqx.filter_grad(loss)(model)
    assert grads.layers[0].weight.shape == (5, 4)
    assert bool(jnp.all(jnp.isfinite(grads.layers[0].weight)))
