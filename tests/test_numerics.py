"""Numerics: extreme inputs, low precision, absent elements, JAX transformations."""

from __future__ import annotations

import functools

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

R = h.rng(30)
Y = np.array([0, 2, 3], np.int32)
T = h.probs(R, 3, 4)
B = np.array([[1.0, 0.0, 0.3, 1.0]] * 3, np.float32)
CW = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
W3 = np.array([0.5, 2.0, 1.0], np.float32)


def _logits(shape=(3, 4)):
    return h.logits(h.rng(31), shape)


def _probs(shape=(3, 4)):
    return h.uniform(h.rng(32), shape, 0.1, 0.9)


# name -> (loss of the first argument, input maker). Every loss with a set of
# options that exercises most of its code paths.
LOSSES = {
    "sigmoid_bce": (
        lambda x, **kw: jaxce.sigmoid_binary_cross_entropy(
            x,
            B,
            pos_weight=np.float32(2.0),
            weights=W3[:, None],
            label_smoothing=0.1,
            **kw,
        ),
        _logits,
    ),
    "softmax_ce": (
        lambda x, **kw: jaxce.softmax_cross_entropy(
            x, T, class_weights=CW, label_smoothing=0.1, **kw
        ),
        _logits,
    ),
    "sparse_softmax_ce": (
        lambda x, **kw: jaxce.sparse_softmax_cross_entropy(
            x, Y, class_weights=CW, weights=W3, label_smoothing=0.1, z_loss=1e-3, **kw
        ),
        _logits,
    ),
    "sigmoid_focal": (
        lambda x, **kw: jaxce.sigmoid_focal_loss(x, B, alpha=0.25, gamma=1.5, **kw),
        _logits,
    ),
    "softmax_focal": (
        lambda x, **kw: jaxce.softmax_focal_loss(x, Y, alpha=CW, gamma=2.0, **kw),
        _logits,
    ),
    "binary_ce": (
        lambda x, **kw: jaxce.binary_cross_entropy(
            x, B, weights=W3[:, None], label_smoothing=0.1, **kw
        ),
        _probs,
    ),
    "categorical_ce": (
        lambda x, **kw: jaxce.categorical_cross_entropy(
            x, T, class_weights=CW, label_smoothing=0.1, **kw
        ),
        _probs,
    ),
    "sparse_categorical_ce": (
        lambda x, **kw: jaxce.sparse_categorical_cross_entropy(
            x, Y, class_weights=CW, weights=W3, label_smoothing=0.1, **kw
        ),
        _probs,
    ),
}
LOGIT_LOSSES = [
    "sigmoid_bce",
    "softmax_ce",
    "sparse_softmax_ce",
    "sigmoid_focal",
    "softmax_focal",
]
PROB_LOSSES = ["binary_ce", "categorical_ce", "sparse_categorical_ce"]
REDUCTIONS = ["mean", "sum", "sum_over_batch_size"]


def _value_and_grad(f, x):
    return jax.value_and_grad(f)(jnp.asarray(x))


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_finite_at_logits_of_1e4(name):
    f, _ = LOSSES[name]
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


@pytest.mark.parametrize("name", PROB_LOSSES)
def test_probabilities_exactly_0_and_1(name):
    f, _ = LOSSES[name]
    x = np.array(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32
    )
    for eps in (None, 1e-7, 1e-15):
        value, grad = _value_and_grad(functools.partial(f, eps=eps), x)
        h.assert_finite((value, grad))


def test_probability_clipping_values():
    p = jnp.array([0.0, 1.0, 0.0, 1.0])
    y = jnp.array([1.0, 0.0, 0.0, 1.0])
    got = jaxce.binary_cross_entropy(p, y, eps=1e-7, reduction="none")
    e32 = np.float32(1e-7)
    expected = [
        -np.log(e32),
        -np.log1p(-(np.float32(1) - e32)),
        -np.log1p(-e32),
        -np.log(np.float32(1) - e32),
    ]
    h.assert_tree_allclose(got, np.array(expected), rtol=1e-4)
    assert float(got[0]) == pytest.approx(-np.log(1e-7), rel=1e-5)


@pytest.mark.parametrize(
    "f",
    [
        lambda p: jaxce.entropy(p),
        lambda p: jaxce.cross_entropy(p, jnp.array([[0.5, 0.5, 0.0]])),
        lambda p: jaxce.kl_divergence(p, jnp.array([[0.5, 0.25, 0.25]])),
        lambda q: jaxce.kl_divergence(jnp.array([[0.5, 0.5, 0.0]]), q),
    ],
    ids=["entropy", "cross_entropy", "kl_p", "kl_q"],
)
def test_information_zeros_have_finite_gradients(f):
    x = jnp.array([[0.5, 0.5, 0.0]])
    value, grad = jax.value_and_grad(lambda v: jnp.sum(f(v)))(x)
    h.assert_finite((value, grad))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_low_precision_is_computed_in_float32(name, dtype):
    f, make = LOSSES[name]
    x = jnp.asarray(make((3, 4))).astype(dtype)
    for reduction in ("none", "mean"):
        got = f(x, reduction=reduction)
        assert got.dtype == dtype
        # float32 arithmetic on the same (rounded) inputs, rounded once at the end
        expected = f(x.astype(jnp.float32), reduction=reduction).astype(dtype)
        np.testing.assert_array_equal(
            np.asarray(got, np.float32), np.asarray(expected, np.float32)
        )
    grad = jax.grad(f)(x)
    assert grad.dtype == dtype
    h.assert_finite(grad)


def test_low_precision_mean_is_accumulated_in_float32():
    # 4096 equal losses: a bf16 running sum would stall, float32 does not.
    z = jnp.full((4096,), 1.0, jnp.bfloat16)
    y = jnp.ones((4096,), jnp.bfloat16)
    got = jaxce.sigmoid_binary_cross_entropy(z, y, reduction="sum")
    expected = np.float32(4096 * np.log1p(np.exp(-1.0)))
    assert got.dtype == jnp.bfloat16
    assert float(got) == pytest.approx(float(expected), rel=1e-2)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_extreme_logits(dtype):
    z = jnp.array([[6e4, -6e4, 0.0]], dtype)
    for f in (
        lambda z: jaxce.sparse_softmax_cross_entropy(z, jnp.array([2])),
        lambda z: jaxce.sigmoid_binary_cross_entropy(z, jnp.ones_like(z)),
    ):
        value, grad = jax.value_and_grad(f)(z)
        assert value.dtype == dtype and grad.dtype == dtype
        h.assert_finite((value, grad))


def _absent_kwargs(name, shape):
    element_shape = (
        shape if name in ("sigmoid_bce", "sigmoid_focal", "binary_ce") else shape[:-1]
    )
    return {"where": np.zeros(element_shape, bool)}


@pytest.mark.parametrize("reduction", REDUCTIONS + ["none"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_all_absent_is_zero_with_zero_gradient(name, reduction):
    f, make = LOSSES[name]
    x = make((3, 4))
    kw = _absent_kwargs(name, (3, 4))
    value, grad = jax.value_and_grad(
        lambda v: jnp.sum(f(v, reduction=reduction, **kw))
    )(jnp.asarray(x))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@pytest.mark.parametrize(
    "f",
    [
        jaxce.sparse_softmax_cross_entropy,
        jaxce.sparse_categorical_cross_entropy,
        jaxce.softmax_focal_loss,
    ],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_is_zero_with_zero_gradient(f, reduction):
    x = jnp.asarray(_probs())
    y = jnp.full((3,), -100)
    value, grad = jax.value_and_grad(
        lambda v: f(v, y, ignore_index=-100, reduction=reduction)
    )(x)
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_zero_weights_are_zero_not_nan():
    z = jnp.asarray(_logits())
    value, grad = jax.value_and_grad(
        lambda v: jaxce.sparse_softmax_cross_entropy(v, Y, weights=jnp.zeros(3))
    )(z)
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_jax_transformations(name):
    f, make = LOSSES[name]
    x = jnp.asarray(make((3, 4)))
    xs = jnp.stack([x, x * 0.5 + 0.1, x[::-1]])
    value, grad = jax.value_and_grad(f)(x)  # eager

    @jax.jit  # one compilation for every transformation
    def transformed(x, xs):
        return (
            f(x),
            jax.vmap(f)(xs),
            jax.grad(f)(x),
            jax.jacfwd(f)(x),
            jax.hessian(f)(x),
        )

    jit_value, vmapped, jit_grad, fwd_grad, hess = transformed(x, xs)
    h.assert_tree_allclose(jit_value, value)
    h.assert_tree_allclose(vmapped, jnp.stack([f(v) for v in xs]))
    h.assert_tree_allclose(jit_grad, grad)
    h.assert_tree_allclose(fwd_grad, grad, rtol=1e-4, atol=1e-6)
    assert hess.shape == x.shape * 2
    h.assert_finite(hess)
    flat = np.asarray(hess).reshape(x.size, x.size)
    np.testing.assert_allclose(flat, flat.T, rtol=1e-4, atol=1e-5)
    # the Hessian is the derivative of the gradient: a finite-difference check
    v = jnp.asarray(h.rng(34).standard_normal(x.shape), jnp.float32)
    g = jax.grad(f)
    fd = (g(x + 1e-2 * v) - g(x - 1e-2 * v)) / 2e-2
    hv = np.tensordot(np.asarray(hess), np.asarray(v), axes=2)
    np.testing.assert_allclose(hv, np.asarray(fd), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", list(LOSSES))
def test_float64_and_gradients_under_x64(name):
    f, make = LOSSES[name]
    with jax.enable_x64(True):
        x = jnp.asarray(make((3, 4)), jnp.float64)
        jf = jax.jit(f)
        value, grad = jax.jit(jax.value_and_grad(f))(x)
        assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
        for reduction in ("none", "sum_over_batch_size"):
            assert f(x, reduction=reduction).dtype == jnp.float64
        # autodiff against a central finite difference along a random direction
        v = jnp.asarray(h.rng(33).standard_normal(x.shape))
        eps = 1e-6
        fd = (jf(x + eps * v) - jf(x - eps * v)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=1e-6)


@pytest.mark.parametrize("z", [-50.0, 50.0, -1e4, 1e4])
def test_focal_hessian_finite_at_saturated_logits(z):
    # (1 - p_t)**gamma is formed from log(1 - p_t): no 1/x**2 overflow when p_t ~ 1.
    logits = jnp.array([z, -z])
    labels = jnp.array([1.0 if z > 0 else 0.0, 0.0 if z > 0 else 1.0])
    h = jax.hessian(lambda t: jaxce.sigmoid_focal_loss(t, labels))(logits)
    assert bool(jnp.all(jnp.isfinite(h)))
    rows = jnp.array([[z, 0.0, -z], [z, -jnp.inf, 0.0]])
    h = jax.hessian(lambda t: jaxce.softmax_focal_loss(t, jnp.array([0, 0])))(rows)
    assert bool(jnp.all(jnp.isfinite(h)))
