"""Regressions of defects found by trying jaxce as a new user would (issue 10).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxce


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
