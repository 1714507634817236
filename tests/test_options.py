"""Options and reductions, for every loss: what each takes, how reductions relate,
log bases, and absent elements (``where``, ``ignore_index``, zero weights)."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as s
from helpers import REDUCTIONS
from hypothesis import given, strategies as st
from losses import LOSSES, Loss, each, taking

import jaxce

# Options given to some losses in the property tests below (beyond the drawn ones).
FIXED = {"sigmoid_focal_loss": dict(alpha=0.3)}


@each()
def test_options_are_the_signature(loss: Loss):
    """The registry's option list is the loss's keyword arguments, and the closed
    form takes the same arguments as the loss."""
    sig = inspect.signature(inspect.unwrap(loss.fn))
    keywords = [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert set(keywords) == set(loss.options)
    assert list(inspect.signature(inspect.unwrap(loss.closed_form)).parameters) == (
        list(sig.parameters)
    )


def _problem_inputs(loss: Loss, pb):
    """``(x, y)`` for ``loss`` from a drawn problem (binary labels from ``t``)."""
    p = np.asarray(jax.nn.softmax(pb["z"]))
    x = pb["z"] if loss.inputs == "logits" else p
    y = {
        "labels": pb["y"],
        "distributions": pb["t"],
        "binary": (pb["t"] > 0.3).astype(np.float32),
    }[loss.targets]
    return x, y


def _bound(loss: Loss, pb):
    x, y = _problem_inputs(loss, pb)
    fixed = FIXED.get(loss.name, {})

    def f(**kw):
        return loss.fn(x, y, **fixed, **kw)

    return f


@s.SETTINGS
@given(s.problems(), st.booleans())
def test_reductions_agree(pb, use_cw):
    w, present = pb["w"], pb["present"]
    for loss in LOSSES:
        f = _bound(loss, pb)
        use_class_weights = use_cw and "class_weights" in loss.options
        if not loss.elementwise:
            kw = dict(weights=w, where=present)
            if use_class_weights:
                kw["class_weights"] = pb["cw"]
        else:  # binary losses: per-element weights (n, 1) over (n, k) elements
            kw = dict(weights=w[:, None], where=present[:, None])
        none = np.asarray(f(reduction="none", **kw), np.float64)
        total = np.asarray(f(reduction="sum", **kw), np.float64)
        s.close(total, none.sum(), atol=1e-4)
        wb = np.broadcast_to(kw["weights"], none.shape)
        pres = np.broadcast_to(kw["where"], none.shape)
        denom_w = wb * pres
        if use_class_weights:
            if loss.targets == "labels":
                denom_w = denom_w * pb["cw"][pb["y"]]
            else:  # soft targets: the weight is sum_c w_c t_c
                denom_w = denom_w * (pb["t"] * pb["cw"]).sum(-1)
        mean = total / denom_w.sum() if denom_w.sum() > 0 else 0.0
        s.close(f(reduction="mean", **kw), mean, atol=1e-4)
        count = pres.sum()
        sobs = total / count if count > 0 else 0.0
        s.close(f(reduction="sum_over_batch_size", **kw), sobs, atol=1e-4)
        assert np.all(none[~pres] == 0), loss.name


@s.SETTINGS
@given(s.problems(), st.sampled_from([2, 10, 0.5, math.e, 7.25]))
def test_base_conversion(pb, base):
    scale = 1 / math.log(base)
    for loss in LOSSES:
        f = _bound(loss, pb)
        for reduction in ("none", "mean"):
            nats = np.asarray(f(reduction=reduction))
            s.close(f(reduction=reduction, base=base), nats * scale)
    p, q = pb["t"], np.asarray(jax.nn.softmax(pb["z"]))
    for fn in (jaxce.cross_entropy, jaxce.kl_divergence):
        s.close(fn(p, q, base=base), np.asarray(fn(p, q)) * scale)
    s.close(jaxce.entropy(p, base=base), np.asarray(jaxce.entropy(p)) * scale)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@each()
def test_all_absent_is_zero_with_zero_gradient(loss, reduction):
    f, x = loss.example_fn()
    kw = {"where": np.zeros(loss.element_shape(x.shape), bool)}
    value, grad = jax.value_and_grad(
        lambda v: jnp.sum(f(v, reduction=reduction, **kw))
    )(jnp.asarray(x))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_batch_size"])
@each(taking("ignore_index"))
def test_all_ignored_is_zero_with_zero_gradient(loss, reduction):
    x, _, _ = loss.example()
    y = jnp.full((3,), -100)
    value, grad = jax.value_and_grad(
        lambda v: loss.fn(v, y, ignore_index=-100, reduction=reduction)
    )(jnp.asarray(x))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@each()
def test_zero_weights_are_zero_not_nan(loss):
    x, y, _ = loss.example()
    weights = jnp.zeros(loss.element_shape(x.shape))
    value, grad = jax.value_and_grad(lambda v: loss.fn(v, y, weights=weights))(
        jnp.asarray(x)
    )
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
