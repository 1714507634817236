"""The seed article's gradient descent: its weights never move, and why."""

from __future__ import annotations

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np

import jaxce

_PATH = pathlib.Path(__file__).parents[1] / "examples" / "gradient_descent.py"
_SPEC = importlib.util.spec_from_file_location("gradient_descent", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
gd = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gd)

X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], np.float32)
Y = np.array([0.0, 1.0, 1.0, 0.0], np.float32)


def test_gradient_at_zero_is_exactly_zero():
    residual = 1 / (1 + np.exp(-(X @ np.zeros(2, np.float32)))) - Y
    np.testing.assert_array_equal(residual, [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_array_equal(X.T @ residual, [0.0, 0.0])
    g = jaxce.closed_form.sigmoid_binary_cross_entropy(jnp.zeros(4), jnp.asarray(Y))
    np.testing.assert_array_equal(np.asarray(g) @ X, [0.0, 0.0])


def test_seed_weights_never_move():
    np.testing.assert_array_equal(gd.numpy_descent(X, Y), [0.0, 0.0])
    w_ad, losses = gd.autodiff_descent(X, Y)
    w_cf, _ = gd.closed_form_descent(X, Y)
    assert losses.shape == (1000,)
    np.testing.assert_array_equal(np.asarray(w_ad), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(w_cf), [0.0, 0.0])
    np.testing.assert_array_equal(gd.predictions(X, w_ad), [0.0, 0.0, 0.0, 0.0])
    assert np.round(0.5) == 0  # the article's rounding: half to even
    np.testing.assert_allclose(losses, np.log(2), rtol=1e-6)


def test_learnable_variant_decreases_the_loss():
    y = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    w_ad, losses = gd.autodiff_descent(X, y)
    w_cf, losses_cf = gd.closed_form_descent(X, y)
    losses = np.asarray(losses)
    assert np.all(np.diff(losses) < 0)
    assert losses[-1] < 0.3 < np.log(2) - 1e-3 < losses[0] + 1e-3
    np.testing.assert_allclose(w_cf, w_ad, rtol=1e-4)
    np.testing.assert_allclose(losses_cf, losses, rtol=1e-5)
    np.testing.assert_allclose(w_ad, gd.numpy_descent(X, y), rtol=1e-4)
    np.testing.assert_array_equal(gd.predictions(X, w_ad), y)
