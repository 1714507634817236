"""Out-of-range labels, hyperparameters given as arrays, and dtype-sensitive outputs."""

from __future__ import annotations

import inspect

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

LOGITS = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
PROBS = jax.nn.softmax(LOGITS)

SPARSE = [
    (
        jaxce.sparse_softmax_cross_entropy,
        jaxce.closed_form.sparse_softmax_cross_entropy,
        LOGITS,
    ),
    (jaxce.softmax_focal_loss, jaxce.closed_form.softmax_focal_loss, LOGITS),
    (
        jaxce.sparse_categorical_cross_entropy,
        jaxce.closed_form.sparse_categorical_cross_entropy,
        PROBS,
    ),
]  # fmt: skip


@pytest.mark.parametrize("loss, closed, x", SPARSE)
@pytest.mark.parametrize("bad", [-1, 3, -100])
def test_out_of_range_label_is_nan_not_a_wrapped_class(loss, closed, x, bad):
    labels = jnp.array([0, bad])
    per_element = loss(x, labels, reduction="none")
    assert np.isfinite(per_element[0]) and np.isnan(per_element[1])
    assert np.isnan(loss(x, labels))
    grad = jax.grad(loss)(x, labels, reduction="sum")
    closed_grad = closed(x, labels, reduction="sum")
    for g in (grad, closed_grad):
        assert bool(jnp.all(jnp.isfinite(g[0]))) and bool(jnp.any(jnp.isnan(g[1])))
    h.assert_tree_allclose(grad[0], closed_grad[0])
    # the same label, declared absent, is simply left out
    kept = loss(x, labels, ignore_index=bad)
    h.assert_tree_allclose(kept, loss(x[:1], labels[:1]))


def test_ignore_index_accepts_numpy_integers():
    # unwrapped: the test-time annotation checker only knows the documented `int`
    labels = jnp.array([0, -100])
    got = inspect.unwrap(jaxce.sparse_softmax_cross_entropy)(
        LOGITS, labels, ignore_index=np.int64(-100)
    )
    want = jaxce.sparse_softmax_cross_entropy(LOGITS, labels, ignore_index=-100)
    assert float(got) == float(want)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: jaxce.sparse_softmax_cross_entropy(
                LOGITS, jnp.array([0, 1]), label_smoothing=jnp.asarray(1.5)
            ),
            "label_smoothing",
        ),
        (
            lambda: jaxce.softmax_focal_loss(
                LOGITS, jnp.array([0, 1]), gamma=jnp.asarray(-1.0)
            ),
            "gamma",
        ),
        (
            lambda: jaxce.softmax_focal_loss(
                LOGITS, jnp.array([0, 1]), alpha=jnp.array([-1.0, 1.0, 1.0])
            ),
            "alpha",
        ),
        (
            lambda: jaxce.sigmoid_focal_loss(
                LOGITS, LOGITS * 0, alpha=jnp.asarray(3.0)
            ),
            "alpha",
        ),
        (
            lambda: jaxce.sparse_softmax_cross_entropy(
                LOGITS, jnp.array([0, 1]), z_loss=np.float32(-1.0)
            ),
            "z_loss",
        ),
    ],
)
def test_array_hyperparameters_are_range_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_traced_hyperparameters_are_not_checked_but_work():
    f = jax.jit(
        lambda eps: jaxce.sparse_softmax_cross_entropy(
            LOGITS, jnp.array([0, 2]), label_smoothing=eps
        )
    )
    want = jaxce.sparse_softmax_cross_entropy(
        LOGITS, jnp.array([0, 2]), label_smoothing=0.1
    )
    h.assert_tree_allclose(f(jnp.asarray(0.1)), want)


@pytest.mark.parametrize(
    "loss", [jaxce.softmax_cross_entropy, jaxce.categorical_cross_entropy]
)
def test_dense_loss_given_integer_labels_names_targets(loss):
    # unwrapped: the test-time annotation checker would reject the shapes first
    with pytest.raises(ValueError, match=r"`targets`.*\(2, 3\).*\(2,\).*sparse"):
        inspect.unwrap(loss)(PROBS, jnp.array([0, 2]))


def test_perplexity_low_precision_is_rounded_once():
    logits = 3 * jax.random.normal(jax.random.key(0), (64, 512))
    labels = jnp.arange(64)
    exact = jaxce.perplexity(logits, labels)
    low = jaxce.perplexity(logits.astype(jnp.bfloat16), labels)
    assert low.dtype == jnp.bfloat16
    # the bf16 logits themselves are rounded, so compare with the float32
    # perplexity of the rounded logits, rounded once to bf16
    ref = jaxce.perplexity(logits.astype(jnp.bfloat16).astype(jnp.float32), labels)
    assert float(low) == float(ref.astype(jnp.bfloat16))
    assert abs(float(low) / float(exact) - 1) < 0.05
