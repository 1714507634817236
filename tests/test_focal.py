"""`sigmoid_focal_loss` and `softmax_focal_loss`, and their closed forms: float64
NumPy formulas, ``gamma=0`` is cross-entropy, finite Hessians when saturated."""

from __future__ import annotations

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as s
from helpers import REDUCTIONS, log_sigmoid, log_softmax
from hypothesis import given, strategies as st

import jaxce
from jaxce import closed_form

R = h.rng(40)
Z = h.logits(R, (3, 4))
Y = np.array([1, 0, 3], np.int32)
CW = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
W = np.array([0.5, 2.0, 1.0], np.float32)
B = np.array(
    [[1.0, 0.0, 0.3, 1.0], [0.0, 0.0, 1.0, 0.7], [1.0, 1.0, 0.0, 0.0]], np.float32
)


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_focal_formula(alpha, gamma):
    p = 1 / (1 + np.exp(-Z.astype(np.float64)))
    ce = -(B * log_sigmoid(Z) + (1 - B) * log_sigmoid(-Z))
    pt = p * B + (1 - p) * (1 - B)
    a = 1.0 if alpha is None else alpha * B + (1 - alpha) * (1 - B)
    loss = a * (1 - pt) ** gamma * ce
    got = jaxce.sigmoid_focal_loss(Z, B, alpha=alpha, gamma=gamma, reduction="none")
    h.assert_tree_allclose(got, loss)


@pytest.mark.parametrize("alpha", [None, 0.25, "per-class"])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_softmax_focal_formula(alpha, gamma):
    logp_y = np.take_along_axis(log_softmax(Z), Y[:, None], -1)[:, 0]
    a = {None: 1.0, 0.25: 0.25, "per-class": CW[Y]}[alpha]
    loss = -a * (1 - np.exp(logp_y)) ** gamma * logp_y
    got = jaxce.softmax_focal_loss(
        Z,
        Y,
        alpha=CW if alpha == "per-class" else alpha,
        gamma=gamma,
        weights=W,
        reduction="none",
    )
    h.assert_tree_allclose(got, W * loss)
    got = jaxce.softmax_focal_loss(
        Z, Y, alpha=CW if alpha == "per-class" else alpha, gamma=gamma, weights=W
    )
    h.assert_tree_allclose(got, (W * loss).sum() / W.sum())


@s.SETTINGS
@given(s.problems(), st.sampled_from(REDUCTIONS))
def test_focal_with_gamma_0_is_cross_entropy(pb, reduction):
    z, y = pb["z"], pb["y"]
    b = (pb["t"] > 0.3).astype(np.float32)
    kw = dict(reduction=reduction, weights=pb["w"])
    s.close(
        jaxce.softmax_focal_loss(z, y, gamma=0.0, **kw),
        jaxce.sparse_softmax_cross_entropy(z, y, **kw),
    )
    kw["weights"] = pb["w"][:, None]
    s.close(
        jaxce.sigmoid_focal_loss(z, b, gamma=0.0, **kw),
        jaxce.sigmoid_binary_cross_entropy(z, b, **kw),
    )


# jitted once for every saturation level below (op-by-op, the first Hessian
# alone compiled ~180 operations)
_SIGMOID_HESSIAN = jax.jit(jax.hessian(lambda t, y: jaxce.sigmoid_focal_loss(t, y)))
_SOFTMAX_HESSIAN = jax.jit(
    jax.hessian(lambda t: jaxce.softmax_focal_loss(t, jnp.array([0, 0])))
)


@pytest.mark.parametrize("z", [-50.0, 50.0, -1e4, 1e4])
def test_focal_hessian_finite_at_saturated_logits(z):
    # (1 - p_t)**gamma is formed from log(1 - p_t): no 1/x**2 overflow when p_t ~ 1.
    logits = jnp.array([z, -z])
    labels = jnp.array([1.0 if z > 0 else 0.0, 0.0 if z > 0 else 1.0])
    hess = _SIGMOID_HESSIAN(logits, labels)
    assert bool(jnp.all(jnp.isfinite(hess)))
    rows = jnp.array([[z, 0.0, -z], [z, -jnp.inf, 0.0]])
    hess = _SOFTMAX_HESSIAN(rows)
    assert bool(jnp.all(jnp.isfinite(hess)))


# -- closed forms -------------------------------------------------------------------


def test_focal_with_gamma_zero_is_cross_entropy_closed_form():
    r = np.random.default_rng(4)
    z = jnp.asarray(r.standard_normal((4, 3)), jnp.float32)
    y = jnp.asarray(r.integers(0, 3, 4), jnp.int32)
    np.testing.assert_allclose(
        h.jitted(closed_form.softmax_focal_loss)(z, y, gamma=0.0),
        h.jitted(closed_form.sparse_softmax_cross_entropy)(z, y),
        rtol=1e-6,
    )
    t = (y == 1).astype(jnp.float32)
    np.testing.assert_allclose(
        h.jitted(closed_form.sigmoid_focal_loss)(z[:, 0], t, gamma=0.0),
        h.jitted(closed_form.sigmoid_binary_cross_entropy)(z[:, 0], t),
        rtol=1e-6,
    )
