"""Closed forms against independent references, edge cases and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_closed_form import closed_form_and_autodiff

import jaxce
from jaxce import closed_form

REDUCTIONS = ("none", "sum", "mean", "sum_over_batch_size")


def jitted(fn):
    """``fn`` compiled once per call site, keyword options static (faster than
    dispatching each operation on new shapes)."""

    def call(*args, **kwargs):
        return jax.jit(lambda *a: fn(*a, **kwargs))(*args)

    return call


def softmax_np(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid_np(z):
    return 1 / (1 + np.exp(-z))


def all_options(dtype):
    """Every loss with all its options at once: ``(name, a, b, options)``."""
    r = np.random.default_rng(1)
    n, k = 6, 4
    labels = r.integers(0, k, n)
    class_mask = (r.uniform(size=(n, k)) < 0.6) | (np.arange(k) == labels[:, None])
    z, y = jnp.asarray(2 * r.standard_normal(n), dtype), jnp.asarray(r.uniform(size=n))
    y = y.astype(dtype)
    logits = jnp.asarray(2 * r.standard_normal((n, k)), dtype)
    probs = jnp.asarray(r.dirichlet(np.ones(k), n) * 0.9 + 0.02, dtype)
    targets = jnp.asarray(r.dirichlet(np.ones(k), n), dtype)
    ignored = jnp.asarray(np.where(np.arange(n) == 2, -1, labels), jnp.int32)
    common = dict(
        weights=jnp.asarray(r.uniform(0.5, 2, n), dtype),
        where=jnp.asarray(np.arange(n) != 4),
        base=2,
    )
    cw = jnp.asarray(r.uniform(0.5, 2, k), dtype)
    sparse = dict(common, class_weights=cw, ignore_index=-1, label_smoothing=0.2)
    sparse["where"] = jnp.asarray(class_mask)
    return [
        ("sigmoid_binary_cross_entropy", z, y,
         dict(common, pos_weight=3.0, label_smoothing=0.1)),
        ("binary_cross_entropy", jnp.clip(sigmoid_np(z), 0.02, 0.98).astype(dtype), y,
         dict(common, eps=0.03, label_smoothing=0.1)),
        ("sigmoid_focal_loss", z, y, dict(common, alpha=0.3, gamma=2.5)),
        ("softmax_cross_entropy", logits, targets,
         dict(common, class_weights=cw, label_smoothing=0.1)),
        ("sparse_softmax_cross_entropy", logits, ignored, dict(sparse, z_loss=0.05)),
        ("categorical_cross_entropy", probs, targets,
         dict(common, class_weights=cw, label_smoothing=0.1, eps=0.05)),
        ("sparse_categorical_cross_entropy", probs, ignored, dict(sparse, eps=0.05)),
        ("softmax_focal_loss", logits, ignored,
         dict(common, alpha=cw, gamma=1.5, ignore_index=-1)),
    ]  # fmt: skip


def grads(name, a, b, opts):
    """(closed form, autodiff) as NumPy arrays."""
    mine, auto = closed_form_and_autodiff(name, a, b, opts)
    return np.asarray(mine), np.asarray(auto)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_loss_all_options_float64(reduction):
    with jax.enable_x64(True):
        for name, a, b, opts in all_options(jnp.float64):
            mine, auto = grads(name, a, b, dict(opts, reduction=reduction))
            assert mine.dtype == np.float64
            assert np.any(mine != 0), name
            np.testing.assert_allclose(mine, auto, rtol=1e-10, atol=1e-12, err_msg=name)


def test_textbook_forms():
    """``softmax(z) - onehot`` / N, ``sigmoid(z) - y`` / N, pos_weight, z-loss."""
    r = np.random.default_rng(2)
    z = r.standard_normal((5, 3)).astype(np.float32)
    y = r.integers(0, 3, 5)
    onehot = np.eye(3)[y]
    g = jitted(closed_form.sparse_softmax_cross_entropy)(z, jnp.asarray(y))
    np.testing.assert_allclose(g, (softmax_np(z) - onehot) / 5, atol=1e-7)
    g = jitted(closed_form.softmax_cross_entropy)(z, 2.0 * onehot, reduction="sum")
    np.testing.assert_allclose(g, softmax_np(z) * 2 - 2 * onehot, atol=1e-6)
    lse = np.log(np.exp(z).sum(-1, keepdims=True))
    g = jitted(closed_form.sparse_softmax_cross_entropy)(
        z, jnp.asarray(y), z_loss=0.1, reduction="sum"
    )
    np.testing.assert_allclose(
        g, softmax_np(z) - onehot + 2 * 0.1 * lse * softmax_np(z), atol=1e-6
    )
    x, t = z[:, 0], (y == 1).astype(np.float32)
    g = jitted(closed_form.sigmoid_binary_cross_entropy)(x, t)
    np.testing.assert_allclose(g, (sigmoid_np(x) - t) / 5, atol=1e-7)
    g = jitted(closed_form.sigmoid_binary_cross_entropy)(
        x, t, pos_weight=3.0, reduction="sum"
    )
    expected = (1 - t) * sigmoid_np(x) - 3.0 * t * (1 - sigmoid_np(x))
    np.testing.assert_allclose(g, expected, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_class_weights_match_pytorch_backward(smoothing):
    """PyTorch's weighted mean (``sum w_y L / sum w_y``), ignore_index, smoothing."""
    r = np.random.default_rng(3)
    z = r.standard_normal((7, 4))
    y = np.array([0, 1, 2, 3, -100, 1, 1])
    w = r.uniform(0.5, 2.0, 4)
    zt = torch.tensor(z, requires_grad=True)
    torch.nn.functional.cross_entropy(
        zt, torch.tensor(y), weight=torch.tensor(w), ignore_index=-100,
        label_smoothing=smoothing,
    ).backward()  # fmt: skip
    with jax.enable_x64(True):
        g = jitted(closed_form.sparse_softmax_cross_entropy)(
            jnp.asarray(z), jnp.asarray(y), class_weights=jnp.asarray(w),
            ignore_index=-100, label_smoothing=smoothing,
        )  # fmt: skip
        np.testing.assert_allclose(np.asarray(g), zt.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "sum_over_batch_size", "sum"])
def test_nothing_present_gives_zero_gradient(reduction):
    z = jnp.array([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]])
    y = jnp.array([-1, -1])
    for name in ("sparse_softmax_cross_entropy", "softmax_focal_loss"):
        g = getattr(closed_form, name)(z, y, ignore_index=-1, reduction=reduction)
        np.testing.assert_array_equal(g, 0.0)
    g = jitted(closed_form.sigmoid_binary_cross_entropy)(
        z[0], jnp.ones(3), where=jnp.zeros(3, bool), reduction=reduction
    )
    np.testing.assert_array_equal(g, 0.0)


def test_masked_classes_and_inf_logits_finite():
    z = jnp.array([[2.0, -jnp.inf, 0.5], [1.0, 0.0, -jnp.inf]])
    y = jnp.array([0, 1])
    for name in ("sparse_softmax_cross_entropy", "softmax_focal_loss"):
        mine, auto = grads(name, z, y, {})
        assert np.all(np.isfinite(mine))
        np.testing.assert_allclose(mine, auto, rtol=1e-6, atol=1e-7)
        assert mine[0, 1] == 0 and mine[1, 2] == 0
    mask = jnp.array([[True, True, False], [True, True, True]])
    g = jitted(closed_form.softmax_cross_entropy)(
        jnp.zeros((2, 3)), jax.nn.one_hot(y, 3), where=mask
    )
    assert g[0, 2] == 0 and np.isclose(float(jnp.sum(g[0])), 0.0, atol=1e-7)


def test_clipped_probabilities_have_zero_gradient():
    p = jnp.array([0.0, 0.01, 0.5, 0.99, 1.0])
    y = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    g = jitted(closed_form.binary_cross_entropy)(p, y, eps=0.05, reduction="sum")
    np.testing.assert_array_equal(np.asarray(g)[[0, 1, 3, 4]], 0.0)
    np.testing.assert_allclose(g[2], -1 / 0.5)
    # On a bound exactly: JAX's jnp.clip convention (half the one-sided value).
    mine, auto = grads("binary_cross_entropy", jnp.array([0.25]), jnp.ones(1),
                       dict(eps=0.25))  # fmt: skip
    np.testing.assert_allclose(mine, auto)
    np.testing.assert_allclose(mine, [-0.5 / 0.25])


def test_low_precision_keeps_dtype():
    z = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
    y = jnp.array([0, 2])
    g16 = jitted(closed_form.sparse_softmax_cross_entropy)(z.astype(jnp.bfloat16), y)
    assert g16.dtype == jnp.bfloat16
    g32 = jitted(closed_form.sparse_softmax_cross_entropy)(z, y)
    np.testing.assert_allclose(g16.astype(jnp.float32), g32, atol=1e-2)


def test_focal_with_gamma_zero_is_cross_entropy():
    r = np.random.default_rng(4)
    z = jnp.asarray(r.standard_normal((4, 3)), jnp.float32)
    y = jnp.asarray(r.integers(0, 3, 4), jnp.int32)
    np.testing.assert_allclose(
        jitted(closed_form.softmax_focal_loss)(z, y, gamma=0.0),
        jitted(closed_form.sparse_softmax_cross_entropy)(z, y),
        rtol=1e-6,
    )
    t = (y == 1).astype(jnp.float32)
    np.testing.assert_allclose(
        jitted(closed_form.sigmoid_focal_loss)(z[:, 0], t, gamma=0.0),
        jitted(closed_form.sigmoid_binary_cross_entropy)(z[:, 0], t),
        rtol=1e-6,
    )


def test_jit_and_vmap():
    z = jnp.array([[[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]]] * 3)
    y = jnp.array([[0, 2]] * 3)
    per_batch = jax.vmap(closed_form.sparse_softmax_cross_entropy)(z, y)
    jitted = jax.jit(closed_form.sparse_softmax_cross_entropy)(z[0], y[0])
    np.testing.assert_allclose(per_batch[1], jitted, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(reduction="avg"),  # ValueError (TypeError under the test type checker)
        dict(class_weights=jnp.ones(5)),
        dict(label_smoothing=1.5),
        dict(base=1),
        dict(z_loss=-1.0),
    ],
)
def test_bad_options_raise_like_the_loss(kwargs):
    z, y = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises((ValueError, TypeError)) as from_loss:
        jaxce.sparse_softmax_cross_entropy(z, y, **kwargs)
    with pytest.raises(type(from_loss.value)):
        closed_form.sparse_softmax_cross_entropy(z, y, **kwargs)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="labels"):
        closed_form.sparse_softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2))
    # ValueError (TypeError from the test-time jaxtyping check) naming the argument.
    with pytest.raises((ValueError, TypeError), match="labels"):
        closed_form.sigmoid_binary_cross_entropy(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match="alpha"):
        closed_form.softmax_focal_loss(jnp.zeros((2, 3)), jnp.array([0, 1]),
                                       alpha=jnp.ones(4))  # fmt: skip
    with pytest.raises(ValueError, match="gamma"):
        closed_form.sigmoid_focal_loss(jnp.zeros(2), jnp.zeros(2), gamma=-1.0)
    with pytest.raises(ValueError, match="eps"):
        closed_form.binary_cross_entropy(jnp.zeros(2), jnp.zeros(2), eps=0.7)
