"""Every loss against an independent float64 NumPy formula, and the seed figures."""

from __future__ import annotations

import math

import helpers as h
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

R = h.rng(40)
Z = h.logits(R, (3, 4))
Y = np.array([1, 0, 3], np.int32)
T = h.probs(R, 3, 4)
CW = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
W = np.array([0.5, 2.0, 1.0], np.float32)
B = np.array(
    [[1.0, 0.0, 0.3, 1.0], [0.0, 0.0, 1.0, 0.7], [1.0, 1.0, 0.0, 0.0]], np.float32
)


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def log_sigmoid(z):
    z = np.asarray(z, np.float64)
    return -np.logaddexp(0.0, -z)


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


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_probability_losses_formula(eps):
    p = T
    logp = np.log(p.astype(np.float64))
    t = (1 - eps) * h.one_hot(Y, 4) + eps / 4
    loss = -(CW * t * logp).sum(-1)
    got = jaxce.sparse_categorical_cross_entropy(
        p, Y, class_weights=CW, label_smoothing=eps, reduction="none"
    )
    h.assert_tree_allclose(got, loss)
    got = jaxce.sparse_categorical_cross_entropy(
        p, Y, class_weights=CW, weights=W, label_smoothing=eps
    )
    h.assert_tree_allclose(got, (W * loss).sum() / (W * CW[Y]).sum())
    got = jaxce.categorical_cross_entropy(
        p, h.one_hot(Y, 4), class_weights=CW, label_smoothing=eps, reduction="none"
    )
    h.assert_tree_allclose(got, loss)


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


def test_ignore_index_and_where_are_absent():
    y = np.array([1, -100, 3], np.int32)
    loss, _ = ref_sparse(Z, np.where(y < 0, 0, y))
    none = jaxce.sparse_softmax_cross_entropy(Z, y, ignore_index=-100, reduction="none")
    h.assert_tree_allclose(none, np.where(y < 0, 0.0, loss))
    mean = jaxce.sparse_softmax_cross_entropy(Z, y, ignore_index=-100)
    h.assert_tree_allclose(mean, (loss[0] + loss[2]) / 2)
    where = jaxce.sparse_softmax_cross_entropy(Z, np.where(y < 0, 2, y), where=y >= 0)
    h.assert_tree_allclose(where, mean)


def test_information_quantities():
    p = np.array([[0.5, 0.5, 0.0], [0.7, 0.2, 0.1]], np.float32)
    q = np.array([[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]], np.float32)
    pd, qd = p.astype(np.float64), q.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        hp = -np.nansum(pd * np.log(pd), -1)
        kl = np.nansum(np.where(pd > 0, pd * np.log(pd / qd), 0.0), -1)
    h.assert_tree_allclose(jaxce.entropy(p), hp)
    h.assert_tree_allclose(jaxce.entropy(p, base=2), hp / math.log(2))
    h.assert_tree_allclose(jaxce.cross_entropy(p, q), -(pd * np.log(qd)).sum(-1))
    h.assert_tree_allclose(jaxce.kl_divergence(p, q), kl)
    h.assert_tree_allclose(jaxce.entropy(p.T, axis=0), hp)
    uniform = np.full((1, 8), 1 / 8, np.float32)
    h.assert_tree_allclose(jaxce.entropy(uniform, base=2), np.array([3.0]))
    # q = 0 under p > 0 is an infinite cross-entropy, not a NaN
    assert float(jaxce.cross_entropy(p[1], np.array([0.0, 0.5, 0.5]))) == np.inf


def test_perplexity():
    loss, _ = ref_sparse(Z, Y)
    h.assert_tree_allclose(jaxce.perplexity(Z, Y), np.exp(loss.mean()))
    h.assert_tree_allclose(
        jaxce.perplexity(Z, Y, weights=W), np.exp((W * loss).sum() / W.sum())
    )
    assert float(jaxce.perplexity(Z, np.full(3, -1, np.int32), ignore_index=-1)) == 1


def test_seed_figures():
    # softmax of scores [2, 1, -1] -> 0.7054, 0.2595, 0.0351
    z = np.array([2.0, 1.0, -1.0], np.float32)
    for c, p in enumerate([0.7054, 0.2595, 0.0351]):
        nll = jaxce.sparse_softmax_cross_entropy(z[None], np.array([c], np.int32))
        assert math.exp(-float(nll)) == pytest.approx(p, abs=5e-5)
    # fruit containers, -log10 of the product: 1.0757 (the article printed 1.073)
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4]], np.float32)
    labels = np.array([0, 2, 2], np.int32)
    got = jaxce.sparse_categorical_cross_entropy(
        probs, labels, reduction="sum", base=10
    )
    assert float(got) == pytest.approx(-math.log10(0.7 * 0.3 * 0.4), rel=1e-6)
    assert float(got) == pytest.approx(1.0757, abs=5e-5)
    # TF CategoricalCrossentropy, dog = class 1: 0.1625189
    got = jaxce.categorical_cross_entropy(
        np.array([0.05, 0.85, 0.10], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    )
    assert float(got) == pytest.approx(-math.log(0.85), rel=1e-6)
    assert float(got) == pytest.approx(0.1625189, abs=1e-7)
    # NumPy clipped BCE: 0.2899092
    got = jaxce.binary_cross_entropy(
        np.array([0.8, 0.3, 0.7, 0.2], np.float32),
        np.array([1.0, 0.0, 1.0, 0.0], np.float32),
        eps=1e-15,
    )
    assert float(got) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2, rel=1e-6)
    assert float(got) == pytest.approx(0.2899092, abs=1e-7)


@pytest.mark.parametrize("label_dtype", [np.float32, np.int32])
def test_shapes_dtypes_and_binary_label_dtypes(label_dtype):
    z = np.array([[2, -1, 0], [1, 1, 3]], np.float32)
    out = jaxce.sparse_softmax_cross_entropy(z, np.array([0, 2], np.int32))
    assert out.shape == () and out.dtype == jnp.float32
    y = np.array([[1, 0, 1], [0, 0, 1]], label_dtype)
    none = jaxce.sigmoid_binary_cross_entropy(z, y, reduction="none")
    assert none.shape == (2, 3) and none.dtype == jnp.float32
    # integer binary labels mean what the float ones do
    expected = -(y * log_sigmoid(z) + (1 - y.astype(np.float64)) * log_sigmoid(-z))
    h.assert_tree_allclose(none, expected)
