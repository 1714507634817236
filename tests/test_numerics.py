"""Numerics at the edges: logits of 1e4 and -inf, probabilities exactly 0 and 1."""

from __future__ import annotations

import functools

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses import CLASS_WEIGHTS as CW, TARGETS as T, Loss, each, where

import jaxce


def _value_and_grad(f, x):
    return jax.value_and_grad(f)(jnp.asarray(x))


@each(where(inputs="logits"))
def test_finite_at_logits_of_1e4(loss: Loss):
    f, _ = loss.example_fn()
    x = np.array(
        [[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, 1e4, 0.0], [1e4, 1e4, -1e4, -1e4]],
        np.float32,
    )
    value, grad = _value_and_grad(f, x)
    h.assert_finite((value, grad))
    assert float(value) > 0


def test_values_at_logits_of_1e4():
    z = jnp.array([[1e4, -1e4], [-1e4, 1e4]])
    y = jnp.array([1, 1])
    # the first row is wrong by 2e4 nats, the second exactly right
    got = jaxce.sparse_softmax_cross_entropy(z, y, reduction="none")
    h.assert_tree_allclose(got, np.array([2e4, 0.0]))
    got = jaxce.sigmoid_binary_cross_entropy(
        jnp.array([-1e4, 1e4]), jnp.array([1.0, 1.0]), reduction="none"
    )
    h.assert_tree_allclose(got, np.array([1e4, 0.0]))
    grad = jax.grad(jaxce.sigmoid_binary_cross_entropy)(
        jnp.array([-1e4, 1e4]), jnp.array([1.0, 1.0])
    )
    h.assert_tree_allclose(grad, np.array([-0.5, 0.0]))
    # +-inf logits with the matching hard label: 0 loss, finite gradient
    z_inf, y_inf = jnp.array([np.inf, -np.inf]), jnp.array([1.0, 0.0])
    for f in (jaxce.sigmoid_binary_cross_entropy, jaxce.sigmoid_focal_loss):
        value, grad = jax.value_and_grad(f)(z_inf, y_inf)
        assert float(value) == 0.0
        h.assert_finite(grad)


NEG_INF_LOGITS = np.array(
    [[1.0, -np.inf, 0.5, -np.inf], [-np.inf, 0.3, 2.0, 1.0], [0.0, 0.0, -np.inf, 1.0]],
    np.float32,
)
FINITE = np.isfinite(NEG_INF_LOGITS)
Y_FINITE = np.array([2, 1, 3], np.int32)


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, **kw: jaxce.sparse_softmax_cross_entropy(
            z, Y_FINITE, class_weights=CW, **kw
        ),
        lambda z, **kw: jaxce.softmax_cross_entropy(z, h.one_hot(Y_FINITE, 4), **kw),
        lambda z, **kw: jaxce.softmax_cross_entropy(
            z, T * FINITE / (T * FINITE).sum(-1, keepdims=True), **kw
        ),
        lambda z, **kw: jaxce.softmax_focal_loss(z, Y_FINITE, **kw),
        lambda z, where=FINITE: jaxce.sparse_softmax_cross_entropy(
            z, Y_FINITE, label_smoothing=0.2, where=where
        ),
    ],
    ids=["sparse", "one_hot", "soft", "focal", "smoothing_with_class_mask"],
)
def test_neg_inf_logits_on_zero_target_classes(loss):
    value, grad = _value_and_grad(loss, NEG_INF_LOGITS)
    h.assert_finite((value, grad))
    np.testing.assert_array_equal(np.asarray(grad)[~FINITE], 0.0)
    # -inf logits are the same as leaving those classes out of the softmax.
    finite_z = np.where(FINITE, NEG_INF_LOGITS, 0.0)
    expected = loss(finite_z, where=FINITE)
    h.assert_tree_allclose(value, expected)


@each(where(inputs="probs"))
def test_probabilities_exactly_0_and_1(loss: Loss):
    f, _ = loss.example_fn()
    x = np.array(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32
    )
    for eps in (None, 1e-7, 1e-15):
        value, grad = _value_and_grad(functools.partial(f, eps=eps), x)
        h.assert_finite((value, grad))


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, y: jaxce.sparse_softmax_cross_entropy(z, y, reduction="none"),
        lambda z, y: jaxce.softmax_cross_entropy(z, h.one_hot(y, 3), reduction="none"),
        lambda z, y: jaxce.softmax_focal_loss(z, y, gamma=0.0, reduction="none"),
    ],
    ids=["sparse", "one_hot", "focal"],
)
def test_confident_predictions_keep_their_small_loss(loss):
    """``log(1 + 2e-9)`` in float32 is 0 through ``log(sum)``; it is
    ``log1p(2e-9)`` here (to a few ulps), at any offset of the logits."""
    y = jnp.array([0, 0])
    for offset in (0.0, 1e4):
        z = jnp.array([[20.0, 0.0, 0.0], [30.0, 10.0, 12.0]], jnp.float32) + offset
        want = np.log1p([2 * np.exp(-20.0), np.exp(-20.0) + np.exp(-18.0)])
        got = np.asarray(loss(z, y), np.float64)
        assert np.all(np.abs(got - want) <= 4 * np.spacing(want.astype(np.float32)))


def test_logits_recomputed_inside_a_fusion():
    """Under ``jit`` XLA may recompute soft-capped logits in two fusions with
    different roundings (on CPU: ``tanh``), so no entry of ``z - max(z)`` is exactly
    0; the loss must not depend on finding one (it gave ``log 2`` too much)."""
    r = np.random.default_rng(0)
    h = jnp.asarray(r.standard_normal((13, 4)), jnp.float32)
    w = jnp.asarray(r.standard_normal((21, 4)), jnp.float32)
    y = jnp.asarray(r.integers(0, 21, 13))

    def loss(h, w):
        z = 2.5 * jnp.tanh((h @ w.T) / 2.5)
        return jaxce.sparse_softmax_cross_entropy(z, y, reduction="none")

    z = np.asarray(2.5 * np.tanh((np.asarray(h, np.float64) @ np.asarray(w).T) / 2.5))
    shifted = z - z.max(-1, keepdims=True)
    want = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(13), np.asarray(y)]
    for fn in (loss, jax.jit(loss)):
        np.testing.assert_allclose(fn(h, w), want, rtol=1e-5)
