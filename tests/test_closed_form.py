"""Closed-form gradients equal autodiff for every loss, option set and reduction.

Property-based: hypothesis draws shapes, the class axis, option values and the
reduction; inputs come from a NumPy generator seeded by hypothesis. float64 runs
inside ``jax.enable_x64`` and must agree to 1e-10, float32 to 1e-5 (relative).
Which options are drawn follows each entry of `losses.LOSSES`.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REDUCTIONS
from hypothesis import given, settings, strategies as st
from losses import LOSSES, Loss, each

import jaxce

TOL = {"float32": 1e-5, "float64": 1e-10}
# 10 examples per (loss, dtype): 20 per loss; compilation dominates the run time.
PROPERTY = settings(max_examples=10, deadline=None, derandomize=True)


def assert_grad_close(loss: Loss, a, b, opts, dtype):
    """Closed form vs ``jax.grad`` of the (summed) loss: shape, dtype and values."""
    mine, auto = loss.grads(a, b, opts)
    assert mine.shape == a.shape and mine.dtype == a.dtype
    auto64, mine64 = np.asarray(auto, np.float64), np.asarray(mine, np.float64)
    assert np.all(np.isfinite(mine64)), (loss.name, opts)
    tol = TOL[str(a.dtype)]
    scale = float(np.max(np.abs(auto64), initial=0.0))
    # Normwise: float32 rounding of softmax(z) near 1 is ~1e-7 absolute, so an
    # element-by-element 1e-5 would fail for both autodiff and the closed form.
    err = float(np.max(np.abs(mine64 - auto64), initial=0.0))
    assert err <= tol * scale, (loss.name, opts, err, scale)
    return mine64, auto64


def make_case(loss: Loss, draw, dtype):
    """Draw a shape, inputs and an option set for ``loss``."""
    r = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))
    opts = {"reduction": draw(st.sampled_from(REDUCTIONS), label="reduction")}
    if draw(st.booleans(), label="base"):
        opts["base"] = draw(st.sampled_from([2, 10, 0.5]))
    batch = draw(st.sampled_from([(4,), (2, 3)]), label="batch")
    if draw(st.booleans(), label="weights"):
        opts["weights"] = jnp.asarray(r.uniform(0.0, 2.0, batch), dtype)
    if loss.elementwise:
        return (*_binary_case(loss, draw, r, batch, dtype, opts), opts)
    return (*_categorical_case(loss, draw, r, batch, dtype, opts), opts)


def _smoothing(draw, opts):
    if draw(st.booleans(), label="smoothing"):
        opts["label_smoothing"] = draw(st.floats(0.0, 0.9))


def _binary_case(loss: Loss, draw, r, shape, dtype, opts):
    soft = draw(st.booleans(), label="soft labels")
    y = r.uniform(size=shape) if soft else (r.uniform(size=shape) < 0.5) * 1.0
    if draw(st.booleans(), label="where"):
        opts["where"] = jnp.asarray(r.uniform(size=shape) < 0.7)
    if loss.inputs == "probs":
        x = r.uniform(0.005, 0.995, shape)
    else:
        x = 2.0 * r.standard_normal(shape)
    if "eps" in loss.options:
        opts["eps"] = draw(st.sampled_from([None, 1e-7, 0.05]), label="eps")
    if "label_smoothing" in loss.options:
        _smoothing(draw, opts)
    if "pos_weight" in loss.options and draw(st.booleans(), label="pos_weight"):
        pw = r.uniform(0.2, 4.0, shape[-1:])  # one per class on the last axis
        opts["pos_weight"] = draw(st.sampled_from([2.5, jnp.asarray(pw, dtype)]))
    if "gamma" in loss.options:
        opts["gamma"] = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), label="gamma")
        opts["alpha"] = draw(st.sampled_from([None, 0.0, 0.25, 1.0]), label="alpha")
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _categorical_case(loss: Loss, draw, r, batch, dtype, opts):
    k = draw(st.sampled_from([3, 5]), label="classes")
    shape = (*batch, k)
    labels = r.integers(0, k, batch)
    sparse = loss.targets == "labels"
    mode = draw(st.sampled_from(["none", "element", "class"]), label="where")
    if mode == "element":
        opts["where"] = jnp.asarray(r.uniform(size=batch) < 0.7)
    elif mode == "class":
        mask = r.uniform(size=shape) < 0.6
        mask[..., 0] &= r.uniform(size=batch) < 0.8  # some rows lose every class
        mask = mask | (np.arange(k) == labels[..., None])  # the label stays in play
        mask &= r.uniform(size=batch)[..., None] < 0.9
        opts["where"] = jnp.asarray(mask)
    if loss.inputs == "probs":
        x = r.dirichlet(np.full(k, 2.0), size=batch) * 0.95 + 0.01
    else:
        x = 2.0 * r.standard_normal(shape)
    if "eps" in loss.options:
        opts["eps"] = draw(st.sampled_from([None, 1e-7, 0.05]), label="eps")
    if "label_smoothing" in loss.options:
        _smoothing(draw, opts)
    if "class_weights" in loss.options and draw(st.booleans(), label="class_weights"):
        opts["class_weights"] = jnp.asarray(r.uniform(0.1, 3.0, k), dtype)
    if "ignore_index" in loss.options and draw(st.booleans(), label="ignore_index"):
        labels = np.where(r.uniform(size=batch) < 0.3, -100, labels)
        opts["ignore_index"] = -100
    if "z_loss" in loss.options and draw(st.booleans(), label="z"):
        opts["z_loss"] = draw(st.floats(1e-4, 0.5))
    if "gamma" in loss.options:
        opts["gamma"] = draw(st.sampled_from([0.0, 0.5, 2.0, 3.5]), label="gamma")
        alpha = draw(st.sampled_from(["none", "scalar", "array"]), label="alpha")
        if alpha == "scalar":
            opts["alpha"] = 0.25
        elif alpha == "array":
            opts["alpha"] = jnp.asarray(r.uniform(0.1, 1.0, k), dtype)
    if sparse:
        target = jnp.asarray(labels, jnp.int32)
    elif draw(st.booleans(), label="one-hot"):
        target = jnp.asarray(np.eye(k)[labels], dtype)
    else:
        target = jnp.asarray(r.dirichlet(np.ones(k), size=batch), dtype)
    if len(batch) == 2 and draw(st.booleans(), label="axis 1"):
        # PyTorch's (N, C, d) layout: classes on axis 1.
        x = np.moveaxis(x, -1, 1)
        if target.ndim == x.ndim:
            target = jnp.moveaxis(target, -1, 1)
        if "where" in opts and opts["where"].ndim == x.ndim:
            opts["where"] = jnp.moveaxis(opts["where"], -1, 1)
        opts["axis"] = 1
    return jnp.asarray(x, dtype), target


@each()
@PROPERTY
@given(data=st.data())
def test_matches_autodiff_float32(loss, data):
    a, b, opts = make_case(loss, data.draw, jnp.float32)
    assert_grad_close(loss, a, b, opts, jnp.float32)


@each()
@PROPERTY
@given(data=st.data())
def test_matches_autodiff_float64(loss, data):
    with jax.enable_x64(True):
        a, b, opts = make_case(loss, data.draw, jnp.float64)
        assert a.dtype == jnp.float64
        assert_grad_close(loss, a, b, opts, jnp.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@each()
def test_every_option_at_once_float64(loss, reduction):
    with jax.enable_x64(True):
        a, b, opts = loss.every_option(jnp.float64)
        mine, auto = loss.grads(a, b, dict(opts, reduction=reduction))
        mine, auto = np.asarray(mine), np.asarray(auto)
        assert mine.dtype == np.float64
        assert np.any(mine != 0), loss.name
        np.testing.assert_allclose(
            mine, auto, rtol=1e-10, atol=1e-12, err_msg=loss.name
        )


def test_every_loss_has_every_option_set():
    # `every_option` sets every option its loss takes but the class axis and the
    # reduction's (`reduction`, and `normalizer`, which replaces the reduction's
    # denominator: every loss and closed form with it in tests/test_normalizer.py).
    for loss in LOSSES:
        _, _, opts = loss.every_option()
        taken = set(loss.options) - {"axis", "reduction", "normalizer"}
        assert set(opts) == taken, loss.name


@pytest.mark.parametrize("reduction", ["mean", "sum_over_batch_size", "sum"])
@each()
def test_nothing_present_gives_zero_gradient(loss, reduction):
    x, y, _ = loss.example()
    absent = np.zeros(loss.element_shape(x.shape), bool)
    g = loss.closed_form(x, y, where=absent, reduction=reduction)
    np.testing.assert_array_equal(g, 0.0)
    if "ignore_index" in loss.options:  # every label ignored
        ignored = np.full_like(y, -1)
        g = loss.closed_form(x, ignored, ignore_index=-1, reduction=reduction)
        np.testing.assert_array_equal(g, 0.0)


@each()
def test_closed_form_takes_exactly_the_arguments_of_its_loss(loss: Loss):
    """`inspect.signature` of a closed form is its loss's, return type aside."""
    ours = inspect.signature(loss.closed_form)
    theirs = inspect.signature(inspect.unwrap(loss.fn))
    assert list(ours.parameters.values()) == list(theirs.parameters.values())
    x, y, _ = loss.example()
    with pytest.raises(TypeError, match=f"closed_form.{loss.name}.*bogus"):
        loss.closed_form(x, y, bogus=1.0)
    with pytest.raises(TypeError, match="positional"):
        loss.closed_form(x, y, "mean")


def test_fused_closed_form_is_single_device():
    h, w, y = jnp.ones((3, 2)), jnp.ones((4, 2)), jnp.array([0, 1, 2])
    mesh = jax.make_mesh((1,), ("vocab",))
    with pytest.raises(ValueError, match="one device"):
        jaxce.closed_form.linear_softmax_cross_entropy(
            h, w, y, mesh=mesh, vocab_axis="vocab"
        )
