"""dtypes, for every loss: bfloat16 / float16 computed in float32 and rounded once,
float64 under x64, and the closed forms keeping the input's dtype."""

from __future__ import annotations

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses import Loss, each

import jaxce

LOW = [jnp.bfloat16, jnp.float16]


@pytest.mark.parametrize("dtype", LOW)
@each()
def test_low_precision_is_computed_in_float32(loss: Loss, dtype):
    f, x = loss.example_fn()
    x = jnp.asarray(x).astype(dtype)
    for reduction in ("none", "mean"):
        got = f(x, reduction=reduction)
        assert got.dtype == dtype
        # float32 arithmetic on the same (rounded) inputs, rounded once at the end
        expected = f(x.astype(jnp.float32), reduction=reduction).astype(dtype)
        np.testing.assert_array_equal(
            np.asarray(got, np.float32), np.asarray(expected, np.float32)
        )
    grad = jax.grad(f)(x)
    assert grad.dtype == dtype
    h.assert_finite(grad)


def test_low_precision_mean_is_accumulated_in_float32():
    # 4096 equal losses: a bf16 running sum would stall, float32 does not.
    z = jnp.full((4096,), 1.0, jnp.bfloat16)
    y = jnp.ones((4096,), jnp.bfloat16)
    got = jaxce.sigmoid_binary_cross_entropy(z, y, reduction="sum")
    expected = np.float32(4096 * np.log1p(np.exp(-1.0)))
    assert got.dtype == jnp.bfloat16
    assert float(got) == pytest.approx(float(expected), rel=1e-2)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_extreme_logits(dtype):
    z = jnp.array([[6e4, -6e4, 0.0]], dtype)
    for f in (
        lambda z: jaxce.sparse_softmax_cross_entropy(z, jnp.array([2])),
        lambda z: jaxce.sigmoid_binary_cross_entropy(z, jnp.ones_like(z)),
    ):
        value, grad = jax.value_and_grad(f)(z)
        assert value.dtype == dtype and grad.dtype == dtype
        h.assert_finite((value, grad))


@each()
def test_float64_and_gradients_under_x64(loss: Loss):
    f, x = loss.example_fn()
    with jax.enable_x64(True):
        x = jnp.asarray(x, jnp.float64)
        jf = jax.jit(f)
        value, grad = jax.jit(jax.value_and_grad(f))(x)
        assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
        for reduction in ("none", "sum_over_batch_size"):  # traced, not compiled
            out = jax.eval_shape(lambda x: f(x, reduction=reduction), x)
            assert out.dtype == jnp.float64
        # autodiff against a central finite difference along a random direction
        v = jnp.asarray(h.rng(33).standard_normal(x.shape))
        eps = 1e-6
        fd = (jf(x + eps * v) - jf(x - eps * v)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=1e-6)


@each()
def test_closed_form_low_precision_keeps_dtype(loss: Loss):
    x, y, opts = loss.example()
    g16 = h.jitted(loss.closed_form)(jnp.asarray(x, jnp.bfloat16), y, **opts)
    assert g16.dtype == jnp.bfloat16
    g32 = h.jitted(loss.closed_form)(jnp.asarray(x), y, **opts)
    # bf16 keeps 8 bits: the rounded input and the rounded output, ~2 * 2**-8 each
    # relative (gradients of probability losses, 1 / p, reach ~1 here)
    np.testing.assert_allclose(g16.astype(jnp.float32), g32, rtol=2e-2, atol=1e-2)
