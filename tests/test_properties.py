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
