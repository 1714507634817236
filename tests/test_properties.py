"""Property tests (hypothesis): laws relating losses of different families.

Laws of one family live in its ``test_<family>.py``, laws every loss obeys
(reductions, log bases) in ``test_options.py``.
"""

from __future__ import annotations

import helpers as h
import jax
import numpy as np
import strategies as s
from hypothesis import given, strategies as st

import jaxce

REDUCTIONS = ["none", "sum", "mean", "sum_over_batch_size"]


@s.SETTINGS
@given(s.problems(), s.f32(-20, 20), st.sampled_from([0.0, 0.1]))
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
        s.close(f(z + shift), f(z), atol=1e-4)


@s.SETTINGS
@given(
    s.problems(),
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
    s.close(
        jaxce.sparse_softmax_cross_entropy(z, y, **kw),
        jaxce.softmax_cross_entropy(z, oh, **kw),
    )
    p = np.asarray(jax.nn.softmax(z))
    s.close(
        jaxce.sparse_categorical_cross_entropy(p, y, **kw),
        jaxce.categorical_cross_entropy(p, oh, **kw),
    )


@s.SETTINGS
@given(s.problems(), st.sampled_from(REDUCTIONS), st.sampled_from([0.0, 0.3]))
def test_sigmoid_bce_is_two_class_softmax(pb, reduction, smoothing):
    z = pb["z"][:, 0]
    y = pb["t"][:, 0]  # soft labels in (0, 1)
    y[0] = 1.0
    two = np.stack([np.zeros_like(z), z], axis=-1)
    targets = np.stack([1 - y, y], axis=-1)
    kw = dict(weights=pb["w"], where=pb["present"], reduction=reduction)
    s.close(
        jaxce.sigmoid_binary_cross_entropy(z, y, label_smoothing=smoothing, **kw),
        jaxce.softmax_cross_entropy(two, targets, label_smoothing=smoothing, **kw),
    )
    # pos_weight is a class weight on the positive class (sum / none reductions)
    if reduction in ("sum", "none"):
        pw = pb["cw"][0]
        s.close(
            jaxce.sigmoid_binary_cross_entropy(z, y, pos_weight=pw, **kw),
            jaxce.softmax_cross_entropy(
                two, targets, class_weights=np.array([1.0, pw], np.float32), **kw
            ),
        )
    # and 2-class integer labels
    hard = (y > 0.5).astype(np.int32)
    s.close(
        jaxce.sigmoid_binary_cross_entropy(z, hard.astype(np.float32), **kw),
        jaxce.sparse_softmax_cross_entropy(two, hard, **kw),
    )


@s.SETTINGS
@given(s.problems(), st.sampled_from(["none", "mean"]))
def test_logit_losses_equal_probability_losses(pb, reduction):
    z, y, t = pb["z"], pb["y"], pb["t"]
    zb = np.clip(z[:, 0], -6, 6)
    b = pb["t"][:, 0]
    kw = dict(reduction=reduction, eps=1e-7)
    s.close(
        jaxce.sigmoid_binary_cross_entropy(zb, b, reduction=reduction),
        jaxce.binary_cross_entropy(np.asarray(jax.nn.sigmoid(zb)), b, **kw),
        rtol=1e-4,
    )
    zc = np.clip(z, -6, 6)
    p = np.asarray(jax.nn.softmax(zc))
    s.close(
        jaxce.softmax_cross_entropy(zc, t, reduction=reduction),
        jaxce.categorical_cross_entropy(p, t, **kw),
        rtol=1e-4,
    )
    s.close(
        jaxce.sparse_softmax_cross_entropy(zc, y, reduction=reduction),
        jaxce.sparse_categorical_cross_entropy(p, y, **kw),
        rtol=1e-4,
    )


# -- target gradients (issue 20) ---------------------------------------------------


@s.SETTINGS
@given(s.problems(), st.sampled_from([0.0, 1.0, None]))
def test_sigmoid_bce_target_gradient_is_minus_logits(pb, hard):
    """``d/dy sum_n L_n = -z``, labels of exactly 0 and 1 included."""
    z = pb["z"][:, 0]
    y = pb["t"][:, 0] if hard is None else np.full_like(z, hard)
    y[0] = 0.0
    g = jax.grad(
        lambda y: jaxce.sigmoid_binary_cross_entropy(z, y, reduction="sum")
    )(y)  # fmt: skip
    s.close(g, -z, rtol=1e-6, atol=1e-6)


@s.SETTINGS
@given(s.problems(), st.integers(0, 3))
def test_softmax_ce_target_gradient_is_minus_log_softmax(pb, zeros):
    """``d/dt sum_n L_n = -log_softmax(z)``, where a target is 0 too."""
    z, t = pb["z"], pb["t"].copy()
    t[:, : min(zeros, pb["k"] - 1)] = 0.0  # exact zeros (rows need not sum to 1)
    g = jax.grad(lambda t: jaxce.softmax_cross_entropy(z, t, reduction="sum"))(t)
    s.close(g, -jax.nn.log_softmax(z), rtol=1e-6, atol=1e-6)
    p = np.asarray(jax.nn.softmax(z))
    g = jax.grad(lambda t: jaxce.categorical_cross_entropy(p, t, reduction="sum"))(t)
    s.close(g, -np.log(np.clip(p, 1.2e-7, 1)), rtol=1e-5, atol=1e-5)


# -- large logit offsets (issue 20) ------------------------------------------------


def _reference_nll(z: np.ndarray, y: np.ndarray, cw, smoothing: float) -> np.ndarray:
    """float64, shifted by the row maximum and with log1p: exact on these inputs."""
    z = z.astype(np.float64)
    shifted = z - z.max(-1, keepdims=True)
    e = np.exp(shifted)
    first_max = np.arange(z.shape[-1]) == np.argmax(z, -1)[:, None]
    log_norm = np.log1p(np.where(first_max, 0.0, e).sum(-1))
    nll = log_norm[:, None] - shifted  # -log softmax, every class
    w = np.ones(z.shape[-1]) if cw is None else cw.astype(np.float64)
    on = np.take_along_axis(nll, y[:, None], -1)[:, 0] * w[y]
    return (1 - smoothing) * on + smoothing / z.shape[-1] * (nll * w).sum(-1)


ULPS = 4


def _within_ulps(got, want, ulps=ULPS):
    want32 = np.asarray(want, np.float32)
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(err <= ulps * np.spacing(np.abs(want32))), (got, want, err)


@s.SETTINGS
@given(
    s.problems(),
    st.sampled_from([1e3, 1e5]),
    st.sampled_from([0.0, 0.1]),
    st.booleans(),
)
def test_large_offset_losses_to_a_few_ulps(pb, c, smoothing, use_cw):
    """Logits ``z + c`` in float32: each loss equals a float64 computation on the
    same float32 inputs to a few float32 ulps of the loss (not of ``c``)."""
    z = (pb["z"] + np.float32(c)).astype(np.float32)
    y, cw = pb["y"], pb["cw"] if use_cw else None
    want = _reference_nll(z, y, cw, smoothing)
    kw = dict(class_weights=cw, label_smoothing=smoothing, reduction="none")
    _within_ulps(jaxce.sparse_softmax_cross_entropy(z, y, **kw), want)
    _within_ulps(jaxce.softmax_cross_entropy(z, h.one_hot(y, pb["k"]), **kw), want)
    # the focal loss: (1 - p_y)^2 times the same nll. Its factor is formed as
    # exp(2 log(1 - p_y)) (finite gradients at saturated logits), which adds the
    # rounding of the log: 2 |log(1 - p_y)| ulps more.
    nll = _reference_nll(z, y, None, 0.0)
    log_q = np.log(-np.expm1(-nll))
    focal = np.exp(2 * log_q) * nll
    got = jaxce.softmax_focal_loss(z, y, reduction="none")
    _within_ulps(got, focal, ULPS + 2 * np.abs(log_q))
    # a soft target: -sum_c t_c log p_c
    t = pb["t"]
    soft = sum(t[:, j] * _reference_nll(z, np.full_like(y, j), None, 0.0)
               for j in range(pb["k"]))  # fmt: skip
    _within_ulps(jaxce.softmax_cross_entropy(z, t, reduction="none"), soft)
