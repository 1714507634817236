"""Closed-form gradients equal autodiff for every loss, option set and reduction.

Property-based: hypothesis draws shapes, the class axis, option values and the
reduction; inputs come from a NumPy generator seeded by hypothesis. float64 runs
inside ``jax.enable_x64`` and must agree to 1e-10, float32 to 1e-5 (relative).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxce
from jaxce import closed_form

REDUCTIONS = ("none", "sum", "mean", "sum_over_batch_size")
BINARY = ("sigmoid_binary_cross_entropy", "binary_cross_entropy", "sigmoid_focal_loss")
CATEGORICAL = (
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
    "categorical_cross_entropy",
    "sparse_categorical_cross_entropy",
    "softmax_focal_loss",
)
LOSSES = BINARY + CATEGORICAL
TOL = {"float32": 1e-5, "float64": 1e-10}
# 10 examples per (loss, dtype): 20 per loss; compilation dominates the run time.
PROPERTY = settings(max_examples=10, deadline=None, derandomize=True)


def closed_form_and_autodiff(name, a, b, opts):
    """``closed_form.name(a, b, **opts)`` and ``jax.grad`` of the summed loss."""
    loss, grad = getattr(jaxce, name), getattr(closed_form, name)

    @jax.jit  # one compilation for both: cheaper than op-by-op dispatch here
    def both(x):
        auto = jax.grad(lambda x: jnp.sum(loss(x, b, **opts)))(x)
        return grad(x, b, **opts), auto

    return both(a)


def assert_grad_close(name, a, b, opts, dtype):
    """Closed form vs ``jax.grad`` of the (summed) loss: shape, dtype and values."""
    mine, auto = closed_form_and_autodiff(name, a, b, opts)
    assert mine.shape == a.shape and mine.dtype == a.dtype
    auto64, mine64 = np.asarray(auto, np.float64), np.asarray(mine, np.float64)
    assert np.all(np.isfinite(mine64)), (name, opts)
    tol = TOL[str(a.dtype)]
    scale = float(np.max(np.abs(auto64), initial=0.0))
    # Normwise: float32 rounding of softmax(z) near 1 is ~1e-7 absolute, so an
    # element-by-element 1e-5 would fail for both autodiff and the closed form.
    err = float(np.max(np.abs(mine64 - auto64), initial=0.0))
    assert err <= tol * scale, (name, opts, err, scale)
    return mine64, auto64


def make_case(name: str, draw, dtype):
    """Draw a shape, inputs and an option set for loss ``name``."""
    r = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))
    opts = {"reduction": draw(st.sampled_from(REDUCTIONS), label="reduction")}
    if draw(st.booleans(), label="base"):
        opts["base"] = draw(st.sampled_from([2, 10, 0.5]))
    batch = draw(st.sampled_from([(4,), (2, 3)]), label="batch")
    if draw(st.booleans(), label="weights"):
        opts["weights"] = jnp.asarray(r.uniform(0.0, 2.0, batch), dtype)
    if name in BINARY:
        return (*_binary_case(name, draw, r, batch, dtype, opts), opts)
    return (*_categorical_case(name, draw, r, batch, dtype, opts), opts)


def _smoothing(draw, opts):
    if draw(st.booleans(), label="smoothing"):
        opts["label_smoothing"] = draw(st.floats(0.0, 0.9))


def _binary_case(name, draw, r, shape, dtype, opts):
    soft = draw(st.booleans(), label="soft labels")
    y = r.uniform(size=shape) if soft else (r.uniform(size=shape) < 0.5) * 1.0
    if draw(st.booleans(), label="where"):
        opts["where"] = jnp.asarray(r.uniform(size=shape) < 0.7)
    if name == "binary_cross_entropy":
        x = r.uniform(0.005, 0.995, shape)
        opts["eps"] = draw(st.sampled_from([None, 1e-7, 0.05]), label="eps")
        _smoothing(draw, opts)
    else:
        x = 2.0 * r.standard_normal(shape)
    if name == "sigmoid_binary_cross_entropy":
        _smoothing(draw, opts)
        if draw(st.booleans(), label="pos_weight"):
            pw = r.uniform(0.2, 4.0, shape[-1:])  # one per class on the last axis
            opts["pos_weight"] = draw(st.sampled_from([2.5, jnp.asarray(pw, dtype)]))
    if name == "sigmoid_focal_loss":
        opts["gamma"] = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), label="gamma")
        opts["alpha"] = draw(st.sampled_from([None, 0.0, 0.25, 1.0]), label="alpha")
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _categorical_case(name, draw, r, batch, dtype, opts):
    k = draw(st.sampled_from([3, 5]), label="classes")
    shape = (*batch, k)
    labels = r.integers(0, k, batch)
    sparse = name.startswith("sparse") or name == "softmax_focal_loss"
    mode = draw(st.sampled_from(["none", "element", "class"]), label="where")
    if mode == "element":
        opts["where"] = jnp.asarray(r.uniform(size=batch) < 0.7)
    elif mode == "class":
        mask = r.uniform(size=shape) < 0.6
        mask[..., 0] &= r.uniform(size=batch) < 0.8  # some rows lose every class
        mask = mask | (np.arange(k) == labels[..., None])  # the label stays in play
        mask &= r.uniform(size=batch)[..., None] < 0.9
        opts["where"] = jnp.asarray(mask)
    if name in ("categorical_cross_entropy", "sparse_categorical_cross_entropy"):
        x = r.dirichlet(np.full(k, 2.0), size=batch) * 0.95 + 0.01
        opts["eps"] = draw(st.sampled_from([None, 1e-7, 0.05]), label="eps")
    else:
        x = 2.0 * r.standard_normal(shape)
    if name != "softmax_focal_loss":
        _smoothing(draw, opts)
        if draw(st.booleans(), label="class_weights"):
            opts["class_weights"] = jnp.asarray(r.uniform(0.1, 3.0, k), dtype)
    if sparse and draw(st.booleans(), label="ignore_index"):
        labels = np.where(r.uniform(size=batch) < 0.3, -100, labels)
        opts["ignore_index"] = -100
    if name == "sparse_softmax_cross_entropy" and draw(st.booleans(), label="z"):
        opts["z_loss"] = draw(st.floats(1e-4, 0.5))
    if name == "softmax_focal_loss":
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


@pytest.mark.parametrize("name", LOSSES)
@PROPERTY
@given(data=st.data())
def test_matches_autodiff_float32(name, data):
    a, b, opts = make_case(name, data.draw, jnp.float32)
    assert_grad_close(name, a, b, opts, jnp.float32)


@pytest.mark.parametrize("name", LOSSES)
@PROPERTY
@given(data=st.data())
def test_matches_autodiff_float64(name, data):
    with jax.enable_x64(True):
        a, b, opts = make_case(name, data.draw, jnp.float64)
        assert a.dtype == jnp.float64
        assert_grad_close(name, a, b, opts, jnp.float64)
