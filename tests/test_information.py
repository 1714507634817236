"""`entropy`, `cross_entropy`, `kl_divergence` and `perplexity`: float64 NumPy
formulas, finite gradients at zero probabilities, and their laws."""

from __future__ import annotations

import math

import helpers as h
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as s
from helpers import log_softmax
from hypothesis import given, strategies as st

import jaxce

R = h.rng(40)
Z = h.logits(R, (3, 4))
Y = np.array([1, 0, 3], np.int32)
W = np.array([0.5, 2.0, 1.0], np.float32)


def test_information_quantities():
    p = np.array([[0.5, 0.5, 0.0], [0.7, 0.2, 0.1]], np.float32)
    q = np.array([[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]], np.float32)
    pd, qd = p.astype(np.float64), q.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        hp = -np.nansum(pd * np.log(pd), -1)
        kl = np.nansum(np.where(pd > 0, pd * np.log(pd / qd), 0.0), -1)
    h.assert_tree_allclose(jaxce.entropy(p), hp)
    h.assert_tree_allclose(jaxce.entropy(p, base=2), hp / math.log(2))
    h.assert_tree_allclose(jaxce.cross_entropy(p, q), -(pd * np.log(qd)).sum(-1))
    h.assert_tree_allclose(jaxce.kl_divergence(p, q), kl)
    h.assert_tree_allclose(jaxce.entropy(p.T, axis=0), hp)
    uniform = np.full((1, 8), 1 / 8, np.float32)
    h.assert_tree_allclose(jaxce.entropy(uniform, base=2), np.array([3.0]))
    # q = 0 under p > 0 is an infinite cross-entropy, not a NaN
    assert float(jaxce.cross_entropy(p[1], np.array([0.0, 0.5, 0.5]))) == np.inf


def test_perplexity():
    logp = log_softmax(Z)
    loss = -np.take_along_axis(logp, Y[:, None], -1)[:, 0]
    h.assert_tree_allclose(jaxce.perplexity(Z, Y), np.exp(loss.mean()))
    h.assert_tree_allclose(
        jaxce.perplexity(Z, Y, weights=W), np.exp((W * loss).sum() / W.sum())
    )
    assert float(jaxce.perplexity(Z, np.full(3, -1, np.int32), ignore_index=-1)) == 1


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


@s.SETTINGS
@given(s.distributions(), st.sampled_from([None, 2, 10]))
def test_cross_entropy_is_entropy_plus_kl(pq, base):
    p, q = pq
    lhs = jaxce.cross_entropy(p, q, base=base)
    rhs = jaxce.entropy(p, base=base) + jaxce.kl_divergence(p, q, base=base)
    s.close(lhs, rhs, atol=1e-5)
    assert np.all(np.asarray(jaxce.kl_divergence(p, q)) >= -1e-6)
    s.close(jaxce.kl_divergence(p, p), np.zeros(p.shape[0]), atol=1e-6)


@s.SETTINGS
@given(
    st.sampled_from([2, 4, 50]),
    st.sampled_from([3]),
    s.f32(-5, 5),
    hnp.arrays(np.bool_, (4,)),
)
def test_perplexity_of_uniform_logits_is_k(k, n, c, keep):
    z = np.full((n, k), c, np.float32)
    y = (np.arange(n) % k).astype(np.int32)
    y = np.where(keep[:n], y, -1).astype(np.int32)
    got = jaxce.perplexity(z, y, ignore_index=-1)
    expected = k if keep[:n].any() else 1.0  # nothing present: exp(0)
    s.close(got, expected, rtol=1e-5)
