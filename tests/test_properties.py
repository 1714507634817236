"""Property tests (hypothesis): laws every loss must obey."""

from __future__ import annotations

import math

import helpers as h
import hypothesis.extra.numpy as hnp
import jax
import numpy as np
from hypothesis import given, settings, strategies as st

import jaxce

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
REDUCTIONS = ["none", "sum", "mean", "sum_over_batch_size"]
TOL = dict(rtol=1e-5, atol=2e-5)


def _f32(lo, hi):
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    return st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw):
    """Logits, labels, targets, class weights, sample weights and a mask.

    Few distinct shapes: every new shape costs JAX compilations, and the laws
    do not depend on the sizes (``present`` varies the effective batch).
    """
    n = 3
    k = draw(st.sampled_from([2, 4]))
    z = draw(hnp.arrays(np.float32, (n, k), elements=_f32(-8, 8)))
    y = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, k - 1)))
    cw = draw(hnp.arrays(np.float32, (k,), elements=_f32(0.1, 3)))
    w = draw(hnp.arrays(np.float32, (n,), elements=_f32(0.0, 2)))
    present = draw(hnp.arrays(np.bool_, (n,)))
    t = draw(hnp.arrays(np.float32, (n, k), elements=_f32(0.01, 1)))
    t = t / t.sum(-1, keepdims=True)
    return dict(z=z, y=y, cw=cw, w=w, present=present, t=t, n=n, k=k)


def _close(a, b, **tol):
    h.assert_tree_allclose(a, b, **(TOL | tol))


@SETTINGS
@given(problems(), _f32(-20, 20), st.sampled_from([0.0, 0.1]))
def test_invariant_to_adding_a_constant_to_logits(pb, c, smoothing):
    z, y, t, cw = pb["z"], pb["y"], pb["t"], pb["cw"]
    shift = np.float32(c)
    for f in (
        lambda z: jaxce.softmax_cross_entropy(
            z, t, class_weights=cw, label_smoothing=smoothing, reduction="none"
        ),
        lambda z: jaxce.sparse_softmax_cross_entropy(
            z, y, class_weights=cw, label_smoothing=smoothing, reduction="none"
        ),
        lambda z: jaxce.softmax_focal_loss(z, y, alpha=cw, reduction="none"),
    ):
        _close(f(z + shift), f(z), atol=1e-4)


@SETTINGS
@given(
    problems(),
    st.sampled_from(REDUCTIONS),
    st.sampled_from([0.0, 0.2]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_integer_labels_equal_one_hot_targets(
    pb, reduction, smoothing, use_cw, use_where, class_mask
):
    z, y, k = pb["z"], pb["y"], pb["k"]
    kw = dict(
        class_weights=pb["cw"] if use_cw else None,
        weights=pb["w"],
        label_smoothing=smoothing,
        reduction=reduction,
    )
    if class_mask:  # a per-class mask that keeps every label's class
        mask = (np.arange(k)[None, :] % 2 == 0) | (np.arange(k)[None, :] == y[:, None])
        kw["where"] = mask
    elif use_where:
        kw["where"] = pb["present"]
    oh = h.one_hot(y, k)
    _close(
        jaxce.sparse_softmax_cross_entropy(z, y, **kw),
        jaxce.softmax_cross_entropy(z, oh, **kw),
    )
    p = np.asarray(jax.nn.softmax(z))
    _close(
        jaxce.sparse_categorical_cross_entropy(p, y, **kw),
        jaxce.categorical_cross_entropy(p, oh, **kw),
    )


@st.composite
def distributions(draw):
    k = draw(st.sampled_from([2, 4]))
    shape = (3, k)
    p = draw(hnp.arrays(np.float32, shape, elements=_f32(0.0, 1.0)))
    p[:, 0] += 0.05  # at least one positive entry; zeros elsewhere are allowed
    q = draw(hnp.arrays(np.float32, shape, elements=_f32(0.01, 1.0)))
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


@SETTINGS
@given(distributions(), st.sampled_from([None, 2, 10]))
def test_cross_entropy_is_entropy_plus_kl(pq, base):
    p, q = pq
    lhs = jaxce.cross_entropy(p, q, base=base)
    rhs = jaxce.entropy(p, base=base) + jaxce.kl_divergence(p, q, base=base)
    _close(lhs, rhs, atol=1e-5)
    assert np.all(np.asarray(jaxce.kl_divergence(p, q)) >= -1e-6)
    _close(jaxce.kl_divergence(p, p), np.zeros(p.shape[0]), atol=1e-6)


def _losses(pb):
    z, y, t = pb["z"], pb["y"], pb["t"]
    b = (pb["t"] > 0.3).astype(np.float32)
    p = np.asarray(jax.nn.softmax(z))
    # (loss, kind, labels): kind "cw" takes class weights, "cat" is a
    # categorical loss without them, "bin" an element-wise binary loss.
    return [
        (lambda **kw: jaxce.sparse_softmax_cross_entropy(z, y, **kw), "cw", y),
        (lambda **kw: jaxce.softmax_cross_entropy(z, t, **kw), "cw", None),
        (lambda **kw: jaxce.sparse_categorical_cross_entropy(p, y, **kw), "cw", y),
        (lambda **kw: jaxce.softmax_focal_loss(z, y, **kw), "cat", None),
        (lambda **kw: jaxce.sigmoid_binary_cross_entropy(z, b, **kw), "bin", None),
        (lambda **kw: jaxce.binary_cross_entropy(p, b, **kw), "bin", None),
        (lambda **kw: jaxce.sigmoid_focal_loss(z, b, alpha=0.3, **kw), "bin", None),
    ]


@SETTINGS
@given(problems(), st.booleans())
def test_reductions_agree(pb, use_cw):
    w, present = pb["w"], pb["present"]
    for loss, kind, y in _losses(pb):
        use_class_weights = use_cw and kind == "cw"
        if kind != "bin":
            kw = dict(weights=w, where=present)
            if use_class_weights:
                kw["class_weights"] = pb["cw"]
        else:  # binary losses: per-element weights (n, 1) over (n, k) elements
            kw = dict(weights=w[:, None], where=present[:, None])
        none = np.asarray(loss(reduction="none", **kw), np.float64)
        total = np.asarray(loss(reduction="sum", **kw), np.float64)
        _close(total, none.sum(), atol=1e-4)
        wb = np.broadcast_to(kw["weights"], none.shape)
        pres = np.broadcast_to(kw["where"], none.shape)
        denom_w = wb * pres
        if use_class_weights:
            if y is not None:
                denom_w = denom_w * pb["cw"][y]
            else:  # soft targets: the weight is sum_c w_c t_c
                denom_w = denom_w * (pb["t"] * pb["cw"]).sum(-1)
        mean = total / denom_w.sum() if denom_w.sum() > 0 else 0.0
        _close(loss(reduction="mean", **kw), mean, atol=1e-4)
        count = pres.sum()
        sobs = total / count if count > 0 else 0.0
        _close(loss(reduction="sum_over_batch_size", **kw), sobs, atol=1e-4)
        assert np.all(none[~pres] == 0)


@SETTINGS
@given(
    st.sampled_from([2, 4, 50]),
    st.sampled_from([3]),
    _f32(-5, 5),
    hnp.arrays(np.bool_, (4,)),
)
def test_perplexity_of_uniform_logits_is_k(k, n, c, keep):
    z = np.full((n, k), c, np.float32)
    y = (np.arange(n) % k).astype(np.int32)
    y = np.where(keep[:n], y, -1).astype(np.int32)
    got = jaxce.perplexity(z, y, ignore_index=-1)
    expected = k if keep[:n].any() else 1.0  # nothing present: exp(0)
    _close(got, expected, rtol=1e-5)


@SETTINGS
@given(problems(), st.sampled_from(REDUCTIONS), st.sampled_from([0.0, 0.3]))
def test_sigmoid_bce_is_two_class_softmax(pb, reduction, smoothing):
    z = pb["z"][:, 0]
    y = pb["t"][:, 0]  # soft labels in (0, 1)
    y[0] = 1.0
    two = np.stack([np.zeros_like(z), z], axis=-1)
    targets = np.stack([1 - y, y], axis=-1)
    kw = dict(weights=pb["w"], where=pb["present"], reduction=reduction)
    _close(
        jaxce.sigmoid_binary_cross_entropy(z, y, label_smoothing=smoothing, **kw),
        jaxce.softmax_cross_entropy(two, targets, label_smoothing=smoothing, **kw),
    )
    # pos_weight is a class weight on the positive class (sum / none reductions)
    if reduction in ("sum", "none"):
        pw = pb["cw"][0]
        _close(
            jaxce.sigmoid_binary_cross_entropy(z, y, pos_weight=pw, **kw),
            jaxce.softmax_cross_entropy(
                two, targets, class_weights=np.array([1.0, pw], np.float32), **kw
            ),
        )
    # and 2-class integer labels
    hard = (y > 0.5).astype(np.int32)
    _close(
        jaxce.sigmoid_binary_cross_entropy(z, hard.astype(np.float32), **kw),
        jaxce.sparse_softmax_cross_entropy(two, hard, **kw),
    )


@SETTINGS
@given(problems(), st.sampled_from([2, 10, 0.5, math.e, 7.25]))
def test_base_conversion(pb, base):
    scale = 1 / math.log(base)
    for loss, _, _ in _losses(pb):
        for reduction in ("none", "mean"):
            nats = np.asarray(loss(reduction=reduction))
            _close(loss(reduction=reduction, base=base), nats * scale)
    p, q = pb["t"], np.asarray(jax.nn.softmax(pb["z"]))
    for f in (jaxce.cross_entropy, jaxce.kl_divergence):
        _close(f(p, q, base=base), np.asarray(f(p, q)) * scale)
    _close(jaxce.entropy(p, base=base), np.asarray(jaxce.entropy(p)) * scale)


@SETTINGS
@given(problems(), st.sampled_from(["none", "mean"]))
def test_logit_losses_equal_probability_losses(pb, reduction):
    z, y, t = pb["z"], pb["y"], pb["t"]
    zb = np.clip(z[:, 0], -6, 6)
    b = pb["t"][:, 0]
    kw = dict(reduction=reduction, eps=1e-7)
    _close(
        jaxce.sigmoid_binary_cross_entropy(zb, b, reduction=reduction),
        jaxce.binary_cross_entropy(np.asarray(jax.nn.sigmoid(zb)), b, **kw),
        rtol=1e-4,
    )
    zc = np.clip(z, -6, 6)
    p = np.asarray(jax.nn.softmax(zc))
    _close(
        jaxce.softmax_cross_entropy(zc, t, reduction=reduction),
        jaxce.categorical_cross_entropy(p, t, **kw),
        rtol=1e-4,
    )
    _close(
        jaxce.sparse_softmax_cross_entropy(zc, y, reduction=reduction),
        jaxce.sparse_categorical_cross_entropy(p, y, **kw),
        rtol=1e-4,
    )


@SETTINGS
@given(problems(), st.sampled_from(REDUCTIONS))
def test_focal_with_gamma_0_is_cross_entropy(pb, reduction):
    z, y = pb["z"], pb["y"]
    b = (pb["t"] > 0.3).astype(np.float32)
    kw = dict(reduction=reduction, weights=pb["w"])
    _close(
        jaxce.softmax_focal_loss(z, y, gamma=0.0, **kw),
        jaxce.sparse_softmax_cross_entropy(z, y, **kw),
    )
    kw["weights"] = pb["w"][:, None]
    _close(
        jaxce.sigmoid_focal_loss(z, b, gamma=0.0, **kw),
        jaxce.sigmoid_binary_cross_entropy(z, b, **kw),
    )


@SETTINGS
@given(problems(), st.sampled_from([0.0, 0.25]))
def test_per_class_where_equals_dropping_the_classes(pb, smoothing):
    z, y, k = pb["z"], pb["y"], pb["k"]
    keep = np.arange(k) != (k - 1)  # drop the last class...
    y = np.where(y == k - 1, 0, y).astype(np.int32)  # ...which no label uses
    mask = np.broadcast_to(keep, z.shape)
    cw = pb["cw"]
    _close(
        jaxce.sparse_softmax_cross_entropy(
            z, y, where=mask, class_weights=cw, label_smoothing=smoothing
        ),
        jaxce.sparse_softmax_cross_entropy(
            z[:, keep], y, class_weights=cw[keep], label_smoothing=smoothing
        ),
    )
