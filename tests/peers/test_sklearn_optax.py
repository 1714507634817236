"""Differential tests against scikit-learn ``log_loss`` and optax losses.

- ``log_loss(normalize=True, sample_weight=w)`` is ``reduction="mean",
  weights=w``; ``normalize=False`` is ``reduction="sum"``. scikit-learn clips to
  the machine epsilon of its (float64) input: our ``eps=None`` under x64.
- optax losses return per-element values: ``reduction="none"``.
"""

from __future__ import annotations

import itertools

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import log_loss

import jaxce


def _rows64(p):
    """float64 rows that sum to 1 to float64 precision (log_loss warns otherwise)."""
    p = p.astype(np.float64)
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize(
    "normalize, use_sw", list(itertools.product([True, False], [False, True]))
)
def test_log_loss_multiclass(normalize, use_sw):
    r = h.rng(20)
    p = h.probs(r, 6, 4)
    y = h.labels(r, (6,), 4)
    y[:4] = [0, 1, 2, 3]  # every class present, as log_loss infers the labels
    sw = h.uniform(r, (6,), 0.1, 3.0) if use_sw else None
    expected = log_loss(y, _rows64(p), normalize=normalize, sample_weight=sw)
    got = jaxce.sparse_categorical_cross_entropy(
        p, y, weights=sw, reduction="mean" if normalize else "sum"
    )
    h.assert_tree_allclose(got, expected)


@pytest.mark.parametrize(
    "normalize, use_sw", list(itertools.product([True, False], [False, True]))
)
def test_log_loss_binary(normalize, use_sw):
    r = h.rng(21)
    p = h.uniform(r, (6, 4), 0.01, 0.99).reshape(-1)
    y = h.binary_labels(r, (24,))
    y[:2] = [0.0, 1.0]
    sw = h.uniform(r, (24,), 0.1, 3.0) if use_sw else None
    expected = log_loss(y, p.astype(np.float64), normalize=normalize, sample_weight=sw)
    got = jaxce.binary_cross_entropy(
        p, y, weights=sw, reduction="mean" if normalize else "sum"
    )
    h.assert_tree_allclose(got, expected)


def test_log_loss_float64_with_probabilities_0_and_1():
    # In float64, eps=None is float64's machine epsilon: scikit-learn's clipping.
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5], [0, 0, 1.0]])
    y = np.array([1, 1, 2, 2])
    sw = np.array([0.5, 1.0, 2.0, 1.5])
    expected = log_loss(y, p, sample_weight=sw, labels=[0, 1, 2])
    with jax.enable_x64(True):
        got = jaxce.sparse_categorical_cross_entropy(
            jnp.asarray(p), jnp.asarray(y), weights=jnp.asarray(sw)
        )
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)
    eps = np.finfo(np.float64).eps  # p = 0 under the label costs -log(eps)
    by_hand = (0.5 * -np.log(eps) + 2.0 * -np.log(0.5)) / sw.sum()
    np.testing.assert_allclose(expected, by_hand, rtol=1e-9)


def test_log_loss_docs_example():
    # sklearn.metrics.log_loss docstring: labels sorted, "ham" = 0, "spam" = 1.
    text = ["spam", "ham", "ham", "spam"]
    p = np.array([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65]], np.float32)
    y = np.array([1, 0, 0, 1], np.int32)
    expected = log_loss(text, _rows64(p))
    got = jaxce.sparse_categorical_cross_entropy(p, y)
    h.assert_tree_allclose(got, expected)
    assert abs(float(got) - 0.21616) < 1e-5
    binary = jaxce.binary_cross_entropy(p[:, 1], y.astype(np.float32))
    h.assert_tree_allclose(binary, expected)


def test_optax_sigmoid_binary_cross_entropy():
    r = h.rng(22)
    z = h.logits(r, (6, 4), scale=5.0)
    y = h.uniform(r, (6, 4), 0.0, 1.0)
    y[0] = [0.0, 1.0, 1.0, 0.0]
    expected = optax.losses.sigmoid_binary_cross_entropy(jnp.asarray(z), y)
    got = jaxce.sigmoid_binary_cross_entropy(z, y, reduction="none")
    h.assert_tree_allclose(got, expected)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_optax_softmax_cross_entropy(axis):
    r = h.rng(23)
    shape = (3, 4, 5)
    z = h.logits(r, shape)
    rest = tuple(d for i, d in enumerate(shape) if i != axis % 3)
    t = h.probs(r, int(np.prod(rest)), shape[axis]).reshape(rest + (shape[axis],))
    t = np.moveaxis(t, -1, axis)
    expected = optax.losses.softmax_cross_entropy(jnp.asarray(z), t, axis=axis)
    got = jaxce.softmax_cross_entropy(z, t, axis=axis, reduction="none")
    h.assert_tree_allclose(got, expected)


def test_optax_softmax_cross_entropy_where():
    r = h.rng(24)
    z = h.logits(r, (4, 5))
    class_mask = np.ones((4, 5), bool)
    class_mask[0, [1, 3]] = class_mask[2, 4] = False
    t = h.probs(r, 4, 5) * class_mask
    t = t / t.sum(-1, keepdims=True)
    expected = optax.losses.softmax_cross_entropy(
        jnp.asarray(z), t, where=jnp.asarray(class_mask)
    )
    got = jaxce.softmax_cross_entropy(z, t, where=class_mask, reduction="none")
    h.assert_tree_allclose(got, expected)
    rows = np.array([True, False, True, True])
    expected = optax.losses.softmax_cross_entropy(
        jnp.asarray(z), t, where=jnp.asarray(rows)
    )
    got = jaxce.softmax_cross_entropy(z, t, where=rows, reduction="none")
    h.assert_tree_allclose(got, jnp.where(rows, expected, 0.0))


@pytest.mark.parametrize("axis", [-1, 1])
def test_optax_softmax_cross_entropy_with_integer_labels(axis):
    r = h.rng(25)
    z = h.logits(r, (3, 6, 2) if axis == 1 else (3, 2, 6))
    y = h.labels(r, (3, 2), 6)
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(z), jnp.asarray(y), axis=axis
    )
    got = jaxce.sparse_softmax_cross_entropy(z, y, axis=axis, reduction="none")
    h.assert_tree_allclose(got, expected)


def test_optax_integer_labels_where():
    r = h.rng(26)
    z = h.logits(r, (4, 5))
    y = np.array([0, 2, 4, 1], np.int32)
    class_mask = np.ones((4, 5), bool)
    class_mask[0, [1, 3]] = class_mask[2, 0] = False
    class_mask[3] = False  # a fully masked row: 0
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(z), jnp.asarray(y), where=jnp.asarray(class_mask)
    )
    got = jaxce.sparse_softmax_cross_entropy(z, y, where=class_mask, reduction="none")
    h.assert_tree_allclose(got, expected)
    assert float(got[3]) == 0.0


def test_optax_docs_examples():
    z = np.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]], np.float32)
    dense = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    sparse = np.array([0, 1], np.int32)
    documented = np.array([0.2761, 2.9518])
    for got, expected in [
        (
            jaxce.softmax_cross_entropy(z, dense, reduction="none"),
            optax.losses.softmax_cross_entropy(jnp.asarray(z), dense),
        ),
        (
            jaxce.sparse_softmax_cross_entropy(z, sparse, reduction="none"),
            optax.losses.softmax_cross_entropy_with_integer_labels(
                jnp.asarray(z), jnp.asarray(sparse)
            ),
        ),
    ]:
        h.assert_tree_allclose(got, expected)
        h.assert_tree_allclose(got, documented, atol=1e-4, rtol=0)
    # The (1, 2, 3, 4) example with axis=(2, 3): a flattened 12-class axis.
    shape = (1, 2, 3, 4)
    logits = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    labels = np.ravel_multi_index((np.array([[1, 2]]), np.array([[1, 3]])), (3, 4))
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(logits), jnp.asarray(labels), axis=(2, 3)
    )
    got = jaxce.sparse_softmax_cross_entropy(
        logits.reshape(1, 2, 12), labels.astype(np.int32), reduction="none"
    )
    h.assert_tree_allclose(got, expected)
    h.assert_tree_allclose(got, np.array([[6.4587, 0.4587]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "alpha, gamma", list(itertools.product([None, 0.25, 0.8], [0.0, 0.5, 2.0, 3.0]))
)
def test_optax_sigmoid_focal_loss(alpha, gamma):
    r = h.rng(27)
    z = h.logits(r, (6, 4), scale=4.0)
    y = h.binary_labels(r, (6, 4))
    y[0] = [0.0, 0.3, 0.9, 1.0]  # soft labels
    expected = optax.losses.sigmoid_focal_loss(
        jnp.asarray(z), jnp.asarray(y), alpha=alpha, gamma=gamma
    )
    got = jaxce.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma, reduction="none")
    h.assert_tree_allclose(got, expected)
