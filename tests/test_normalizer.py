"""``normalizer=``: the loss is ``sum(weights * L) / normalizer``, for every loss
and its closed form; with it, gradient accumulation over microbatches is exact."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose
from losses import Loss, each

import jaxce
from jaxce._core import check_normalizer

SCALAR = ("sum", "mean", "sum_over_batch_size")


@each()
@pytest.mark.parametrize("reduction", SCALAR)
def test_normalizer_divides_the_weighted_sum(loss: Loss, reduction: str):
    x, y, options = loss.every_option()
    options = {k: v for k, v in options.items() if k != "reduction"}
    got = jax.jit(
        lambda x: loss.fn(x, y, **options, reduction=reduction, normalizer=2.5)
    )(x)
    summed = loss.fn(x, y, **options, reduction="sum")
    np.testing.assert_allclose(got, summed / 2.5, rtol=1e-6)
    closed = loss.closed_form(x, y, **options, reduction=reduction, normalizer=2.5)
    auto = jax.grad(
        lambda x: loss.fn(x, y, **options, reduction=reduction, normalizer=2.5)
    )(x)
    assert_tree_allclose(closed, auto, rtol=1e-5, atol=1e-6)


BAD_NORMALIZERS = [
    (0.0, ValueError, "must be finite and > 0"),  # zero
    (-2, ValueError, "must be finite and > 0"),  # negative
    (float("inf"), ValueError, "must be finite and > 0"),  # inf
    (np.float32(np.nan), ValueError, "must be finite and > 0"),  # nan
    (True, TypeError, "must be a finite real number"),  # bool
    (np.bool_(True), TypeError, "must be a finite real number"),  # numpy-bool
    (jnp.array(True), TypeError, "must be a finite real number"),  # bool-array
    ("6", TypeError, "must be a finite real number"),  # string
    (2 + 1j, TypeError, "must be a finite real number"),  # complex
    (jnp.array(2 + 0j), TypeError, "must be a finite real number"),
    (jnp.ones(2, jnp.float32), ValueError, "must be a scalar"),  # shape
]
IDS = ["zero", "negative", "inf", "nan", "bool", "numpy-bool", "bool-array",
       "string", "complex", "complex-array", "shape"]  # fmt: skip


@each()
def test_normalizer_checks(loss: Loss):
    x, y, options = loss.example()
    with pytest.raises(ValueError, match="`normalizer` divides a summed loss"):
        loss.fn(x, y, **options, reduction="none", normalizer=2.0)
    for value, error, match in BAD_NORMALIZERS:
        for fn in (loss.fn, loss.closed_form):
            # (in the tests jaxtyping may refuse a wrong type first, naming
            # the parameter too; the message itself is checked below)
            with pytest.raises(error, match="normalizer"):
                fn(x, y, **options, normalizer=value)
    # a traced normalizer is taken as it is (jaxce.validate checks its value)
    value = jax.jit(lambda n: loss.fn(x, y, **options, normalizer=n))(2.0)
    summed = loss.fn(x, y, **options, reduction="sum")
    np.testing.assert_allclose(value, summed / 2.0, rtol=1e-6)
    # integer numbers and arrays are real numbers
    for n in (2, np.int32(2), jnp.asarray(2)):
        np.testing.assert_allclose(
            loss.fn(x, y, **options, normalizer=n), summed / 2.0, rtol=1e-6
        )


@pytest.mark.parametrize("value, error, match", BAD_NORMALIZERS, ids=IDS)
def test_normalizer_errors_name_the_argument(value, error, match):
    """Each bad value raises, naming ``normalizer`` and the value given."""
    with pytest.raises(error, match=f"`normalizer` {match}") as info:
        check_normalizer(value, "mean")
    if "scalar" not in match:
        assert repr(value) in str(info.value)


def test_traced_normalizer_is_checked_by_validate():
    z, y = jnp.zeros((2, 3)), jnp.array([0, 2])

    @jax.jit
    def loss(n):
        n = jaxce.validate(z, normalizer=n)[1]
        return jaxce.sparse_softmax_cross_entropy(z, y, normalizer=n)

    np.testing.assert_allclose(loss(4.0), 2 * np.log(3) / 4, rtol=1e-6)
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(Exception, match="`normalizer` must be finite and > 0"):
            jax.block_until_ready(loss(bad))
    x, labels, n = jaxce.validate(z, y, normalizer=3)  # one array per argument
    assert int(n) == 3 and labels.shape == (2,)
    with pytest.raises(TypeError, match="`normalizer`"):
        jax.jit(lambda n: jaxce.validate(z, normalizer=n))(jnp.array(True))


def test_gradient_accumulation_is_exact():
    """k microbatches, each given the whole batch's total as ``normalizer``, sum to
    the whole batch's ``"mean"`` loss and gradient; per-microbatch means do not."""
    r = np.random.default_rng(0)
    n, k, parts = 24, 7, 4
    logits = jnp.asarray(2 * r.standard_normal((n, k)), jnp.float32)
    labels = np.asarray(r.integers(0, k, n), np.int32)
    labels[r.uniform(size=n) < 0.3] = -100  # ignored tokens, unevenly spread
    labels[:6] = -100  # the first microbatch is entirely padding
    labels = jnp.asarray(labels)
    cw = jnp.asarray(r.uniform(0.5, 2.0, k), jnp.float32)
    kw = dict(ignore_index=-100, class_weights=cw, label_smoothing=0.1)

    def loss(z, y, **extra):
        return jaxce.sparse_softmax_cross_entropy(z, y, **kw, **extra)

    full = jax.value_and_grad(loss)(logits, labels)
    present = labels != -100
    total = jnp.sum(jnp.where(present, cw[jnp.where(present, labels, 0)], 0.0))
    step = n // parts
    acc_value, acc_grad, mean_value = 0.0, [], 0.0
    for i in range(0, n, step):
        z, y = logits[i : i + step], labels[i : i + step]
        v, g = jax.value_and_grad(lambda z: loss(z, y, normalizer=total))(z)
        acc_value, acc_grad = acc_value + v, [*acc_grad, g]
        mean_value = mean_value + loss(z, y) / parts
    np.testing.assert_allclose(acc_value, full[0], rtol=2e-7, atol=0)
    np.testing.assert_allclose(jnp.concatenate(acc_grad), full[1], rtol=1e-6, atol=1e-9)
    assert abs(float(mean_value) - float(full[0])) > 1e-2  # "mean" per part is off
