"""JAX transformations, for every loss and its closed form: jit, vmap, grad,
jacfwd, hessian; hyperparameters passed as traced values."""

from __future__ import annotations

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
from losses import Loss, each

import jaxce


@each()
def test_jax_transformations(loss: Loss):
    f, x = loss.example_fn()
    x = jnp.asarray(x)
    xs = jnp.stack([x, x * 0.5 + 0.1, x[::-1]])
    value, grad = jax.value_and_grad(f)(x)  # eager

    @jax.jit  # one compilation for every transformation
    def transformed(x, xs):
        return (
            f(x),
            jax.vmap(f)(xs),
            jax.grad(f)(x),
            jax.jacfwd(f)(x),
            jax.hessian(f)(x),
        )

    jit_value, vmapped, jit_grad, fwd_grad, hess = transformed(x, xs)
    h.assert_tree_allclose(jit_value, value)
    h.assert_tree_allclose(vmapped, jnp.stack([f(v) for v in xs]))
    h.assert_tree_allclose(jit_grad, grad)
    h.assert_tree_allclose(fwd_grad, grad, rtol=1e-4, atol=1e-6)
    assert hess.shape == x.shape * 2
    h.assert_finite(hess)
    flat = np.asarray(hess).reshape(x.size, x.size)
    np.testing.assert_allclose(flat, flat.T, rtol=1e-4, atol=1e-5)
    # the Hessian is the derivative of the gradient: a finite-difference check
    v = jnp.asarray(h.rng(34).standard_normal(x.shape), jnp.float32)
    g = jax.grad(f)
    fd = (g(x + 1e-2 * v) - g(x - 1e-2 * v)) / 2e-2
    hv = np.tensordot(np.asarray(hess), np.asarray(v), axes=2)
    np.testing.assert_allclose(hv, np.asarray(fd), rtol=2e-2, atol=2e-3)


@each()
def test_closed_form_jit_and_vmap(loss: Loss):
    x, y, opts = loss.example()
    xs, ys = jnp.stack([jnp.asarray(x)] * 3), jnp.stack([jnp.asarray(y)] * 3)

    def closed(x, y):
        return loss.closed_form(x, y, **opts)

    @jax.jit  # one compilation for both
    def both(xs, ys, x, y):
        return jax.vmap(closed)(xs, ys), closed(x, y)

    per_batch, jitted = both(xs, ys, x, y)
    np.testing.assert_allclose(per_batch[1], jitted, rtol=1e-6)


def test_traced_hyperparameters_are_accepted():
    # Range checks apply to Python numbers; traced values are the caller's job.
    z2, y1 = np.zeros((3, 4), np.float32), np.array([0, 1, 3], np.int32)
    f = jax.jit(
        lambda ls, g: (
            jaxce.sparse_softmax_cross_entropy(z2, y1, label_smoothing=ls)
            + jaxce.softmax_focal_loss(z2, y1, gamma=g)
        )
    )
    assert np.isfinite(float(f(jnp.float32(0.1), jnp.float32(2.0))))


def test_traced_hyperparameters_are_not_checked_but_work():
    logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
    f = jax.jit(
        lambda eps: jaxce.sparse_softmax_cross_entropy(
            logits, jnp.array([0, 2]), label_smoothing=eps
        )
    )
    want = jaxce.sparse_softmax_cross_entropy(
        logits, jnp.array([0, 2]), label_smoothing=0.1
    )
    h.assert_tree_allclose(f(jnp.asarray(0.1)), want)
