"""`softmax_cross_entropy` and `sparse_softmax_cross_entropy`, and their closed
forms: against independent float64 NumPy formulas, the textbook gradients, masks
and ``-inf`` logits, and the per-class ``where``."""

from __future__ import annotations

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as s
from helpers import log_softmax, softmax_np
from hypothesis import given, strategies as st
from losses import BY_NAME

import jaxce
from jaxce import closed_form

R = h.rng(40)
Z = h.logits(R, (3, 4))
Y = np.array([1, 0, 3], np.int32)
T = h.probs(R, 3, 4)
CW = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
W = np.array([0.5, 2.0, 1.0], np.float32)


def ref_sparse(z, y, cw=None, eps=0.0, zl=0.0):
    k = z.shape[-1]
    cw = np.ones(k) if cw is None else np.asarray(cw, np.float64)
    logp = log_softmax(z)
    lse = np.log(np.exp(np.asarray(z, np.float64)).sum(-1))
    nll = -np.take_along_axis(logp, y[:, None], -1)[:, 0] * cw[y]
    loss = (1 - eps) * nll - eps / k * (logp * cw).sum(-1) + zl * lse**2
    return loss, cw[y]


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("use_cw", [False, True])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_sparse_softmax_cross_entropy_formula(eps, use_cw, z_loss):
    cw = CW if use_cw else None
    loss, denom = ref_sparse(Z, Y, cw, eps, z_loss)
    kw = dict(class_weights=cw, label_smoothing=eps, z_loss=z_loss)
    none = jaxce.sparse_softmax_cross_entropy(Z, Y, reduction="none", **kw)
    h.assert_tree_allclose(none, loss)
    mean = jaxce.sparse_softmax_cross_entropy(Z, Y, weights=W, **kw)
    h.assert_tree_allclose(mean, (W * loss).sum() / (W * denom).sum())


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_softmax_cross_entropy_formula(eps):
    t = (1 - eps) * T.astype(np.float64) + eps / 4
    loss = -(CW * t * log_softmax(Z)).sum(-1)
    denom = (CW * T).sum(-1)
    got = jaxce.softmax_cross_entropy(
        Z, T, class_weights=CW, label_smoothing=eps, reduction="none"
    )
    h.assert_tree_allclose(got, loss)
    got = jaxce.softmax_cross_entropy(Z, T, class_weights=CW, label_smoothing=eps)
    h.assert_tree_allclose(got, loss.sum() / denom.sum())


def test_class_axis_and_batch_dimensions():
    # (N, K, S) with axis=1 equals (N, S, K) with axis=-1; weights broadcast (S,)
    z = h.logits(R, (2, 4, 3))
    y = h.labels(R, (2, 3), 4)
    t = np.moveaxis(h.probs(R, 6, 4).reshape(2, 3, 4), -1, 1)
    w = np.array([1.0, 0.5, 2.0], np.float32)
    for reduction in ("none", "mean", "sum"):
        a = jaxce.sparse_softmax_cross_entropy(
            z, y, axis=1, weights=w, reduction=reduction
        )
        b = jaxce.sparse_softmax_cross_entropy(
            np.moveaxis(z, 1, -1), y, weights=w, reduction=reduction
        )
        h.assert_tree_allclose(a, b)
        a = jaxce.softmax_cross_entropy(z, t, axis=1, reduction=reduction)
        b = jaxce.softmax_cross_entropy(
            np.moveaxis(z, 1, -1), np.moveaxis(t, 1, -1), reduction=reduction
        )
        h.assert_tree_allclose(a, b)
    assert jaxce.sparse_softmax_cross_entropy(z, y, axis=1, reduction="none").shape == (
        2,
        3,
    )


def test_ignore_index_and_where_are_absent():
    y = np.array([1, -100, 3], np.int32)
    loss, _ = ref_sparse(Z, np.where(y < 0, 0, y))
    none = jaxce.sparse_softmax_cross_entropy(Z, y, ignore_index=-100, reduction="none")
    h.assert_tree_allclose(none, np.where(y < 0, 0.0, loss))
    mean = jaxce.sparse_softmax_cross_entropy(Z, y, ignore_index=-100)
    h.assert_tree_allclose(mean, (loss[0] + loss[2]) / 2)
    where = jaxce.sparse_softmax_cross_entropy(Z, np.where(y < 0, 2, y), where=y >= 0)
    h.assert_tree_allclose(where, mean)


def test_sparse_output_is_a_float32_scalar():
    z = np.array([[2, -1, 0], [1, 1, 3]], np.float32)
    out = jaxce.sparse_softmax_cross_entropy(z, np.array([0, 2], np.int32))
    assert out.shape == () and out.dtype == jnp.float32


@s.SETTINGS
@given(s.problems(), st.sampled_from([0.0, 0.25]))
def test_per_class_where_equals_dropping_the_classes(pb, smoothing):
    z, y, k = pb["z"], pb["y"], pb["k"]
    keep = np.arange(k) != (k - 1)  # drop the last class...
    y = np.where(y == k - 1, 0, y).astype(np.int32)  # ...which no label uses
    mask = np.broadcast_to(keep, z.shape)
    cw = pb["cw"]
    s.close(
        jaxce.sparse_softmax_cross_entropy(
            z, y, where=mask, class_weights=cw, label_smoothing=smoothing
        ),
        jaxce.sparse_softmax_cross_entropy(
            z[:, keep], y, class_weights=cw[keep], label_smoothing=smoothing
        ),
    )


# -- closed forms -------------------------------------------------------------------


def test_textbook_softmax_forms():
    """``softmax(z) - onehot`` / N, dense targets, and the z-loss term."""
    r = np.random.default_rng(2)
    z = r.standard_normal((5, 3)).astype(np.float32)
    y = r.integers(0, 3, 5)
    onehot = np.eye(3)[y]
    g = h.jitted(closed_form.sparse_softmax_cross_entropy)(z, jnp.asarray(y))
    np.testing.assert_allclose(g, (softmax_np(z) - onehot) / 5, atol=1e-7)
    g = h.jitted(closed_form.softmax_cross_entropy)(z, 2.0 * onehot, reduction="sum")
    np.testing.assert_allclose(g, softmax_np(z) * 2 - 2 * onehot, atol=1e-6)
    lse = np.log(np.exp(z).sum(-1, keepdims=True))
    g = h.jitted(closed_form.sparse_softmax_cross_entropy)(
        z, jnp.asarray(y), z_loss=0.1, reduction="sum"
    )
    np.testing.assert_allclose(
        g, softmax_np(z) - onehot + 2 * 0.1 * lse * softmax_np(z), atol=1e-6
    )


def test_masked_classes_and_inf_logits_finite():
    z = jnp.array([[2.0, -jnp.inf, 0.5], [1.0, 0.0, -jnp.inf]])
    y = jnp.array([0, 1])
    for name in ("sparse_softmax_cross_entropy", "softmax_focal_loss"):
        mine, auto = BY_NAME[name].grads(z, y, {})
        mine, auto = np.asarray(mine), np.asarray(auto)
        assert np.all(np.isfinite(mine))
        np.testing.assert_allclose(mine, auto, rtol=1e-6, atol=1e-7)
        assert mine[0, 1] == 0 and mine[1, 2] == 0
    mask = jnp.array([[True, True, False], [True, True, True]])
    g = h.jitted(closed_form.softmax_cross_entropy)(
        jnp.zeros((2, 3)), jax.nn.one_hot(y, 3), where=mask
    )
    assert g[0, 2] == 0 and np.isclose(float(jnp.sum(g[0])), 0.0, atol=1e-7)


def test_closed_form_jit_and_vmap():
    z = jnp.array([[[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]]] * 3)
    y = jnp.array([[0, 2]] * 3)
    per_batch = jax.vmap(closed_form.sparse_softmax_cross_entropy)(z, y)
    jitted = jax.jit(closed_form.sparse_softmax_cross_entropy)(z[0], y[0])
    np.testing.assert_allclose(per_batch[1], jitted, rtol=1e-6)


def test_closed_form_low_precision_matches_float32():
    z = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
    y = jnp.array([0, 2])
    g16 = h.jitted(closed_form.sparse_softmax_cross_entropy)(z.astype(jnp.bfloat16), y)
    assert g16.dtype == jnp.bfloat16
    g32 = h.jitted(closed_form.sparse_softmax_cross_entropy)(z, y)
    np.testing.assert_allclose(g16.astype(jnp.float32), g32, atol=1e-2)
