"""`sigmoid_binary_cross_entropy` and `binary_cross_entropy`, and their closed
forms: float64 NumPy formulas, label dtypes, clipping, the textbook gradients."""

from __future__ import annotations

import helpers as h
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import log_sigmoid, sigmoid_np
from losses import BY_NAME

import jaxce
from jaxce import closed_form

R = h.rng(40)
Z = h.logits(R, (3, 4))
W = np.array([0.5, 2.0, 1.0], np.float32)
B = np.array(
    [[1.0, 0.0, 0.3, 1.0], [0.0, 0.0, 1.0, 0.7], [1.0, 1.0, 0.0, 0.0]], np.float32
)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sigmoid_binary_cross_entropy_formula(eps):
    y = B.astype(np.float64) * (1 - eps) + eps / 2
    pw = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    loss = -(pw * y * log_sigmoid(Z) + (1 - y) * log_sigmoid(-Z))
    got = jaxce.sigmoid_binary_cross_entropy(
        Z, B, pos_weight=pw, label_smoothing=eps, reduction="none"
    )
    h.assert_tree_allclose(got, loss)
    got = jaxce.sigmoid_binary_cross_entropy(
        Z, B, weights=W[:, None], pos_weight=pw, label_smoothing=eps
    )
    h.assert_tree_allclose(got, (W[:, None] * loss).sum() / (4 * W.sum()))


@pytest.mark.parametrize("eps", [None, 1e-7, 0.05])
def test_binary_cross_entropy_formula(eps):
    p = np.array(
        [[0.0, 0.2, 0.5, 1.0], [0.9, 0.01, 0.3, 0.99], [1.0, 0.6, 0.0, 0.4]], np.float32
    )
    e = np.finfo(np.float32).eps if eps is None else eps
    pc = np.clip(p.astype(np.float64), e, 1 - e)
    loss = -(B * np.log(pc) + (1 - B) * np.log1p(-pc))
    got = jaxce.binary_cross_entropy(p, B, eps=eps, reduction="none")
    h.assert_tree_allclose(got, loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label_dtype", [np.float32, np.int32])
def test_binary_label_dtypes(label_dtype):
    z = np.array([[2, -1, 0], [1, 1, 3]], np.float32)
    y = np.array([[1, 0, 1], [0, 0, 1]], label_dtype)
    none = jaxce.sigmoid_binary_cross_entropy(z, y, reduction="none")
    assert none.shape == (2, 3) and none.dtype == jnp.float32
    # integer binary labels mean what the float ones do
    expected = -(y * log_sigmoid(z) + (1 - y.astype(np.float64)) * log_sigmoid(-z))
    h.assert_tree_allclose(none, expected)


def test_probability_clipping_values():
    p = jnp.array([0.0, 1.0, 0.0, 1.0])
    y = jnp.array([1.0, 0.0, 0.0, 1.0])
    got = jaxce.binary_cross_entropy(p, y, eps=1e-7, reduction="none")
    e32 = np.float32(1e-7)
    expected = [
        -np.log(e32),
        -np.log1p(-(np.float32(1) - e32)),
        -np.log1p(-e32),
        -np.log(np.float32(1) - e32),
    ]
    h.assert_tree_allclose(got, np.array(expected), rtol=1e-4)
    assert float(got[0]) == pytest.approx(-np.log(1e-7), rel=1e-5)


# -- closed forms -------------------------------------------------------------------


def test_textbook_sigmoid_forms():
    """``sigmoid(z) - y`` / N, and pos_weight."""
    r = np.random.default_rng(2)
    z = r.standard_normal((5, 3)).astype(np.float32)
    y = r.integers(0, 3, 5)
    x, t = z[:, 0], (y == 1).astype(np.float32)
    g = h.jitted(closed_form.sigmoid_binary_cross_entropy)(x, t)
    np.testing.assert_allclose(g, (sigmoid_np(x) - t) / 5, atol=1e-7)
    g = h.jitted(closed_form.sigmoid_binary_cross_entropy)(
        x, t, pos_weight=3.0, reduction="sum"
    )
    expected = (1 - t) * sigmoid_np(x) - 3.0 * t * (1 - sigmoid_np(x))
    np.testing.assert_allclose(g, expected, atol=1e-6)


def test_clipped_probabilities_have_zero_gradient():
    p = jnp.array([0.0, 0.01, 0.5, 0.99, 1.0])
    y = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    g = h.jitted(closed_form.binary_cross_entropy)(p, y, eps=0.05, reduction="sum")
    np.testing.assert_array_equal(np.asarray(g)[[0, 1, 3, 4]], 0.0)
    np.testing.assert_allclose(g[2], -1 / 0.5)
    # On a bound exactly: JAX's jnp.clip convention (half the one-sided value).
    mine, auto = BY_NAME["binary_cross_entropy"].grads(
        jnp.array([0.25]), jnp.ones(1), dict(eps=0.25)
    )
    np.testing.assert_allclose(np.asarray(mine), np.asarray(auto))
    np.testing.assert_allclose(np.asarray(mine), [-0.5 / 0.25])
