"""`categorical_cross_entropy` and `sparse_categorical_cross_entropy` (losses of
probabilities), and their closed forms, against float64 NumPy formulas."""

from __future__ import annotations

import helpers as h
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import closed_form

R = h.rng(40)
_ = h.logits(R, (3, 4))  # the draws of test_softmax's Z: the same T follows
Y = np.array([1, 0, 3], np.int32)
T = h.probs(R, 3, 4)
CW = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
W = np.array([0.5, 2.0, 1.0], np.float32)


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


def test_textbook_probability_forms():
    """``-t / p`` for the summed loss, ``-onehot / p`` for integer labels."""
    t = h.probs(h.rng(41), 3, 4)
    g = h.jitted(closed_form.categorical_cross_entropy)(T, t, reduction="sum")
    np.testing.assert_allclose(g, -t / T, rtol=1e-6)
    g = h.jitted(closed_form.sparse_categorical_cross_entropy)(
        T, jnp.asarray(Y), reduction="sum"
    )
    np.testing.assert_allclose(g, -h.one_hot(Y, 4) / T, rtol=1e-6)
