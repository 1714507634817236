"""Regressions of defects found by trying jaxce as a new user would (issues 10, 20).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
import torch

import jaxce
import jaxce.keras as jk
from jaxce._core._checks import check_normalizer


def test_fused_loss_accepts_a_numpy_integer_ignore_index():
    """``ignore_index=np.int64(-100)`` raised TypeError in the fused loss only."""
    r = np.random.default_rng(0)
    h = jnp.asarray(r.standard_normal((6, 4)), jnp.float32)
    w = jnp.asarray(r.standard_normal((9, 4)), jnp.float32)
    y = jnp.array([0, -100, 3, 8, -100, 1])
    plain = jaxce.linear_softmax_cross_entropy(h, w, y, ignore_index=-100)
    numpy_int = jaxce.linear_softmax_cross_entropy(h, w, y, ignore_index=np.int64(-100))
    unfused = jaxce.sparse_softmax_cross_entropy(
        h @ w.T, y, ignore_index=np.int64(-100)
    )
    np.testing.assert_allclose(numpy_int, plain, rtol=1e-6)
    np.testing.assert_allclose(numpy_int, unfused, rtol=1e-5)
    dh, dw, _ = jaxce.closed_form.linear_softmax_cross_entropy(
        h, w, y, ignore_index=np.int32(-100)
    )
    ref = jax.grad(jaxce.linear_softmax_cross_entropy, (0, 1))(
        h, w, y, ignore_index=-100
    )
    np.testing.assert_allclose(dh, ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "fn", [jaxce.softmax_focal_loss, jaxce.closed_form.softmax_focal_loss]
)
def test_focal_alpha_array_with_a_negative_entry_is_refused(fn):
    """The closed form checked a scalar ``alpha`` only and returned gradients."""
    logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1])
    with pytest.raises(ValueError, match="`alpha` must be >= 0"):
        fn(logits, labels, alpha=jnp.array([0.5, -0.25, 1.0]))
    with pytest.raises(ValueError, match="`alpha` must be a scalar or have shape"):
        fn(logits, labels, alpha=jnp.array([0.5, 0.25]))


def _torch_grads(fn, *arrays):
    ts = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy() for t in ts]


def test_cross_entropy_gradient_in_p_is_minus_log_q_where_p_is_zero():
    """``d/dp [-sum p log q]`` is ``-log q``; it was 0 where ``p == 0``."""
    p = jnp.array([0.0, 0.7, 0.3])
    q = jnp.array([0.0166, 0.5, 0.4834])
    gp, gq = jax.grad(jaxce.cross_entropy, (0, 1))(p, q)
    tp, tq = _torch_grads(lambda a, b: -(a * torch.log(b)).sum(), p, q)
    np.testing.assert_allclose(gp, tp, rtol=1e-6)
    np.testing.assert_allclose(gq, tq, rtol=1e-6)
    assert float(gp[0]) == pytest.approx(-np.log(0.0166), rel=1e-6)  # 4.0983
    assert float(gp[0]) > 4.0


def test_information_gradients_at_zeros_are_documented_values():
    """What entropy, cross-entropy and KL give where p or q has zeros."""
    p = jnp.array([0.0, 0.0, 0.6, 0.4])
    q = jnp.array([0.0, 0.2, 0.5, 0.3])
    # entropy: -(1 + log p) where p > 0; 0 where p == 0 (one-sided derivative +inf)
    gh = jax.grad(jaxce.entropy)(p)
    np.testing.assert_allclose(gh, [0.0, 0.0, -(1 + np.log(0.6)), -(1 + np.log(0.4))],
                               rtol=1e-6)  # fmt: skip
    # cross-entropy: d/dp = -log q (0 at p == q == 0, no derivative exists there);
    # d/dq = -p / q, 0 where p == 0
    gp, gq = jax.grad(jaxce.cross_entropy, (0, 1))(p, q)
    np.testing.assert_allclose(gp, [0.0, -np.log(0.2), -np.log(0.5), -np.log(0.3)],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(gq, [0.0, 0.0, -0.6 / 0.5, -0.4 / 0.3], rtol=1e-6)
    # KL: d/dp = 1 + log p - log q where p > 0, -log q where p == 0; d/dq = -p / q
    kp, kq = jax.grad(jaxce.kl_divergence, (0, 1))(p, q)
    expected_kp = [0.0, -np.log(0.2), 1 + np.log(0.6 / 0.5), 1 + np.log(0.4 / 0.3)]
    np.testing.assert_allclose(kp, expected_kp, rtol=1e-6)
    np.testing.assert_allclose(kq, gq, rtol=1e-6)
    # the identity H(p, q) = H(p) + KL(p || q) holds for the gradients as well
    np.testing.assert_allclose(gp, gh + kp, rtol=1e-6, atol=1e-7)
    for g in (gh, gp, gq, kp, kq):
        assert np.all(np.isfinite(np.asarray(g)))


def test_entropy_gradient_through_an_underflowed_softmax_is_finite():
    """A probability that underflows to 0 inside a softmax gives no NaN."""
    z = jnp.array([0.0, 1.0, -200.0])
    g = jax.grad(lambda z: jaxce.entropy(jax.nn.softmax(z)))(z)
    ref = jax.grad(
        lambda z: -jnp.sum(jax.nn.softmax(z) * jax.nn.log_softmax(z))
    )(z)  # fmt: skip
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-7)


# -- issue 20: numerics are the product -------------------------------------------
# Each test below failed on 2fae6c3.


def test_issue20_sigmoid_bce_target_gradient_at_0_and_1():
    """``d/dy`` was [-0.854, 1.463, -2.0]; it is ``-z`` (PyTorch, optax)."""
    z, y = jnp.array([0.3, -1.2, 2.0]), jnp.array([0.0, 1.0, 0.5])
    g = jax.grad(lambda y: jaxce.sigmoid_binary_cross_entropy(z, y, reduction="sum"))
    (_, ty) = _torch_grads(
        lambda a, b: torch.nn.functional.binary_cross_entropy_with_logits(
            a, b, reduction="sum"
        ),
        z,
        y,
    )
    np.testing.assert_allclose(g(y), ty, rtol=1e-6)
    np.testing.assert_allclose(g(y), -z, rtol=1e-6)


def test_issue20_soft_target_gradient_where_a_target_is_0():
    """``d/dt_c`` of the softmax cross-entropy is ``-log_softmax(z)_c``, also where
    ``t_c = 0`` (it was 0 there), in N-D with the class axis 1 too."""
    z = jnp.array([[[2.0, 0.5], [1.0, -1.0], [-1.0, 3.0]]])  # (1, C=3, 2)
    t = jnp.array([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]])
    g = jax.grad(
        lambda t: jaxce.softmax_cross_entropy(z, t, axis=1, reduction="sum")
    )(t)  # fmt: skip
    np.testing.assert_allclose(g, -jax.nn.log_softmax(z, axis=1), rtol=1e-6)
    p = jax.nn.softmax(z, axis=1)
    g = jax.grad(
        lambda t: jaxce.categorical_cross_entropy(p, t, axis=1, reduction="sum")
    )(t)  # fmt: skip
    np.testing.assert_allclose(g, -jnp.log(p), rtol=1e-6)


def test_issue20_focal_target_gradient_at_0_and_1():
    z = np.array([0.3, -1.2, 2.0, 4.0])
    y = np.array([0.0, 1.0, 0.5, 0.0])

    def theirs(a, b):  # torchvision.ops.sigmoid_focal_loss, summed
        p = torch.sigmoid(a)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(
            a, b, reduction="none"
        )
        return (ce * (1 - (p * b + (1 - p) * (1 - b))) ** 2).sum()

    g = jax.grad(lambda y: jaxce.sigmoid_focal_loss(z, y, reduction="sum"))(y)
    np.testing.assert_allclose(g, _torch_grads(theirs, z, y)[1], rtol=1e-5)


def test_issue20_no_cancellation_at_large_logits():
    """``lse - z_y`` lost ulps of ``|z|``: 0.3125 instead of PyTorch's 0.31326."""
    z = jnp.array([[1e5, 1e5 - 1, 0.0]])
    want = float(torch.nn.functional.cross_entropy(torch.tensor(np.asarray(z)),
                                                   torch.tensor([0])))  # fmt: skip
    assert abs(want - 0.31326) < 1e-5
    for got in (
        jaxce.sparse_softmax_cross_entropy(z, jnp.array([0])),
        jaxce.softmax_cross_entropy(z, jnp.array([[1.0, 0.0, 0.0]])),
        jaxce.softmax_focal_loss(z, jnp.array([0]), gamma=0.0),
        jnp.log(jaxce.perplexity(z, jnp.array([0]))),
    ):
        assert abs(float(got) - want) < 1e-6, float(got)
    ties = jnp.array([[3e38, 3e38, 0.0]])  # was 0
    for got in (
        jaxce.sparse_softmax_cross_entropy(ties, jnp.array([0])),
        jaxce.softmax_focal_loss(ties, jnp.array([1]), gamma=0.0),
    ):
        np.testing.assert_allclose(got, np.log(2.0), rtol=1e-6)
    # the focal closed form read log p_y the same way
    g = jaxce.closed_form.softmax_focal_loss(z, jnp.array([0]), reduction="sum")
    ref = jax.grad(jaxce.softmax_focal_loss)(z - 1e5, jnp.array([0]))
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5])
def test_issue20_offsets_cost_no_accuracy(offset):
    """Offsets of 1e3 - 1e5 gave errors of 3e-5 to 4e-3 (the dense loss: 2.5e-7)."""
    r = np.random.default_rng(1)
    z = (r.standard_normal((64, 10)) * 3).astype(np.float32) + np.float32(offset)
    y = r.integers(0, 10, 64)
    z64 = z.astype(np.float64)
    shifted = z64 - z64.max(-1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(-1))
    want = lse - np.take_along_axis(shifted, y[:, None], -1)[:, 0]
    got = jaxce.sparse_softmax_cross_entropy(z, jnp.asarray(y), reduction="none")
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(err <= 4 * np.spacing(want.astype(np.float32))), err.max()


# The fused heads (the lead's part of issue 20): ties at 1e7 and empty batches.


def _tie_head():
    h = jnp.array([[1.0], [1.0]])
    w = jnp.array([[1e7], [1e7], [0.0]])  # logits [1e7, 1e7, 0]: log 2
    return h, w, jnp.array([0, 1])


def _mesh():
    devices = np.array(jax.devices())
    rows = 2 if devices.size % 2 == 0 else 1
    mesh = jax.sharding.Mesh(devices.reshape(rows, -1), ("b", "v"))
    return dict(mesh=mesh, batch_axis="b", vocab_axis="v")


@pytest.mark.parametrize("path", ["token", "recompute", "mesh"])
def test_issue20_fused_tie_at_1e7_is_log_2(path):
    """``linear_softmax_cross_entropy`` gave 1.0 (``linear_token_stats``: exact)."""
    h, w, y = _tie_head()
    if path == "token":  # a scalar reduction, differentiated
        value, (dh, dw) = jax.value_and_grad(
            jaxce.linear_softmax_cross_entropy, (0, 1)
        )(h, w, y)
        np.testing.assert_allclose(value, np.log(2.0), rtol=1e-6)
        np.testing.assert_allclose(dw[2], 0.0, atol=1e-6)  # softmax [1/2, 1/2, 0]
    elif path == "recompute":
        value = jaxce.linear_softmax_cross_entropy(h, w, y, reduction="none")
        np.testing.assert_allclose(value, np.log(2.0) * np.ones(2), rtol=1e-6)
    else:
        value = jaxce.linear_softmax_cross_entropy(h, w, y, **_mesh())
        np.testing.assert_allclose(value, np.log(2.0), rtol=1e-6)
    stats = jaxce.linear_token_stats(h, w, y)
    np.testing.assert_allclose(stats.logprob, -np.log(2.0) * np.ones(2), rtol=1e-6)


def _empty_heads():
    h, w = jnp.zeros((0, 3), jnp.float32), jnp.ones((5, 3), jnp.float32)
    y = jnp.zeros((0,), jnp.int32)
    return (
        {
            "linear_softmax_cross_entropy": (
                lambda h, w: jaxce.linear_softmax_cross_entropy(h, w, y)
            ),
            "linear_token_stats": (
                lambda h, w: jnp.sum(jaxce.linear_token_stats(h, w, y).logprob)
            ),
            "linear_distillation_loss": (
                lambda h, w: jaxce.linear_distillation_loss(h, w, h, w)
            ),
        },
        h,
        w,
    )


@pytest.mark.parametrize(
    "head",
    ["linear_softmax_cross_entropy", "linear_token_stats", "linear_distillation_loss"],
)
def test_issue20_fused_heads_on_an_empty_batch(head):
    """N = 0 raised ZeroDivisionError; the plain losses give 0 and zero gradients."""
    fns, h, w = _empty_heads()
    value, (dh, dw) = jax.value_and_grad(fns[head], (0, 1))(h, w)
    assert float(value) == 0.0
    assert dh.shape == h.shape and dw.shape == w.shape
    np.testing.assert_array_equal(dw, 0.0)
    plain = jax.value_and_grad(jaxce.sparse_softmax_cross_entropy)(
        h @ w.T, jnp.zeros((0,), jnp.int32)
    )
    assert float(plain[0]) == 0.0


def test_issue20_fused_closed_form_on_an_empty_batch():
    _, h, w = _empty_heads()
    dh, dw, db = jaxce.closed_form.linear_softmax_cross_entropy(
        h, w, jnp.zeros((0,), jnp.int32)
    )
    assert dh.shape == (0, 3) and dw.shape == (5, 3) and db is None
    np.testing.assert_array_equal(dw, 0.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda h, w, y: jaxce.linear_softmax_cross_entropy(h, w, y),
        lambda h, w, y: jaxce.closed_form.linear_softmax_cross_entropy(h, w, y),
        lambda h, w, y: jaxce.linear_token_stats(h, w, y),
        lambda h, w, y: jaxce.linear_distillation_loss(h, w, h, w),
    ],
    ids=["loss", "closed_form", "token_stats", "distillation"],
)
def test_issue20_fused_heads_refuse_an_empty_vocabulary(call):
    h, w, y = jnp.ones((2, 3)), jnp.zeros((0, 3)), jnp.array([0, 0])
    with pytest.raises(ValueError, match="vocab|weight"):
        call(h, w, y)


@pytest.mark.parametrize(
    "bad", [float("inf"), True, "6", 1 + 2j], ids=["inf", "bool", "string", "complex"]
)
def test_issue20_bad_normalizers_raise(bad):
    """inf gave 0, True was 1, "6" was 6, complex an unnamed TypeError."""
    with pytest.raises((ValueError, TypeError), match="`normalizer`"):
        check_normalizer(bad, "mean")  # what runs without jaxtyping's checks
    z, y = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises((ValueError, TypeError), match="normalizer"):
        jaxce.sparse_softmax_cross_entropy(z, y, normalizer=bad)
    h, w = jnp.ones((2, 4)), jnp.ones((3, 4))
    with pytest.raises((ValueError, TypeError), match="normalizer"):
        jaxce.linear_softmax_cross_entropy(h, w, y, normalizer=bad)


def test_issue20_keras_classes_default_to_probabilities():
    """``from_logits`` defaulted to True: a softmax output taken as logits."""
    probs = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32)
    labels = np.array([1, 2])
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        want = float(keras.losses.SparseCategoricalCrossentropy()(labels, probs))
    got = float(jk.SparseCategoricalCrossentropy()(labels, probs))
    assert abs(got - want) < 1e-6, (got, want)
