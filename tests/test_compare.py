"""`jaxce.compare_gradients`: the report's numbers, its verdict, its table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import closed_form

LOGITS = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
LABELS = jnp.array([0, 2, 1, 2])


def scaled(factor):
    def wrong(*args, **kwargs):
        return factor * closed_form.sparse_softmax_cross_entropy(*args, **kwargs)

    return wrong


def test_correct_closed_form_passes():
    r = jaxce.compare_gradients(
        jaxce.sparse_softmax_cross_entropy,
        closed_form.sparse_softmax_cross_entropy,
        LOGITS,
        LABELS,
        label_smoothing=0.1,
        reduction="none",
    )
    assert isinstance(r, jaxce.GradientReport)
    assert r.passed
    assert r.name == "sparse_softmax_cross_entropy"
    assert r.shape == (4, 3) and r.dtype == "float32" and r.rtol == 1e-5
    assert r.max_rel_error < 1e-6 and r.max_abs_error < 1e-7
    assert abs(r.cosine_similarity - 1) < 1e-9
    assert r.finite_difference_error is not None and r.finite_difference_error < 1e-7
    assert r.options == {"label_smoothing": "0.1", "reduction": "'none'"}


def test_one_percent_wrong_is_flagged():
    args = (jaxce.sparse_softmax_cross_entropy, scaled(1.01), LOGITS, LABELS)
    r = jaxce.compare_gradients(*args)
    assert not r.passed
    assert r.max_rel_error == pytest.approx(0.01, rel=1e-3)
    assert r.finite_difference_error == pytest.approx(0.01 / 1.01, rel=1e-3)
    assert abs(r.cosine_similarity - 1) < 1e-9  # a scale error keeps the direction
    # Autodiff alone catches it too, and looser tolerances accept it.
    assert not jaxce.compare_gradients(*args, finite_differences=False).passed
    assert jaxce.compare_gradients(*args, rtol=0.02, fd_rtol=0.02).passed
    # 1 % too small as well.
    assert not jaxce.compare_gradients(
        jaxce.sparse_softmax_cross_entropy, scaled(0.99), LOGITS, LABELS
    ).passed


def test_worst_index_points_at_a_planted_error():
    def planted(*args, **kwargs):
        g = closed_form.sparse_softmax_cross_entropy(*args, **kwargs)
        return g.at[2, 1].add(0.01 * jnp.max(jnp.abs(g)))

    r = jaxce.compare_gradients(
        jaxce.sparse_softmax_cross_entropy, planted, LOGITS, LABELS
    )
    assert not r.passed
    assert r.worst_index == (2, 1)
    assert r.max_rel_error == pytest.approx(0.01, rel=1e-3)


def test_float64_uses_tight_tolerance_and_random_directions():
    with jax.enable_x64(True):
        z = jnp.asarray(np.random.default_rng(1).standard_normal(300))
        y = (z > 0.3).astype(jnp.float64)
        fns = (jaxce.sigmoid_focal_loss, closed_form.sigmoid_focal_loss)
        r = jaxce.compare_gradients(*fns, z, y, fd_max_coords=64, gamma=1.5)
        assert r.passed and r.rtol == 1e-10 and r.max_rel_error < 1e-13
        assert r.finite_difference_error is not None
        assert r.finite_difference_error < 1e-7

        def off(*args, **kwargs):  # wrong by 1e-8 relative: only float64 sees it
            return (1 + 1e-8) * closed_form.sigmoid_focal_loss(*args, **kwargs)

        assert not jaxce.compare_gradients(fns[0], off, z, y, gamma=1.5).passed


def test_pytree_argument():
    model = jaxce.models.SoftmaxRegression(3, 4, key=jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((8, 3)), jnp.float32)
    y = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])

    def loss(m, x, y):
        return jaxce.sparse_softmax_cross_entropy(jax.vmap(m)(x), y)

    r = jaxce.compare_gradients(loss, closed_form.linear_model_grads, model, x, y)
    assert r.passed and r.shape == ()
    assert isinstance(r.worst_index, str) and r.worst_index.startswith(".")


def test_printing():
    r = jaxce.compare_gradients(
        jaxce.sparse_softmax_cross_entropy, scaled(1.01), LOGITS, LABELS,
        finite_differences=False, z_loss=1e-3, weights=jnp.ones(4),
    )  # fmt: skip
    text = str(r)
    for row in ("max |closed - autodiff|", "cosine similarity", "worst index"):
        assert row in text
    assert "not computed" in text and text.rstrip().endswith("NO")
    assert "weights=(4,)" in text
    table = jaxce.GradientReport.table([r, r])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("loss")
    assert "weights[4]" in lines[2] and lines[2].rstrip().endswith("FAIL")
