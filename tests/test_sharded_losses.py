"""Every loss and closed form on sharded inputs gives the single-device answer.

Meshes of both kinds (issue 12): `jax.make_mesh` gives Explicit axes (sharding in
types; JAX refuses an operation whose output sharding it cannot infer), and
`jax.sharding.Mesh` Auto axes (GSPMD decides). The inputs and labels are split
over the batch (``"data"``), the classes (``"classes"``) or both, on 8 host CPU
devices (the root conftest.py); every option the loss takes is set (the
registry's `every_option`). Checked: the mean loss, the per-element losses, the
autodiff gradient and the closed form, against one device, to 2e-5; on Explicit
meshes also the shardings of the results (per-element losses split like the
batch, gradients like the input).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose
from jax.sharding import NamedSharding, PartitionSpec as P
from losses import LOSSES, Loss, each

import jaxce

TOL = dict(rtol=2e-5, atol=2e-6)
LAYOUTS = {
    "batch": ("data", None),
    "classes": (None, "classes"),
    "both": ("data", "classes"),
}


@functools.cache
def mesh(kind: str) -> jax.sharding.Mesh:
    """A (2, 4) mesh over the 8 host devices: Explicit or Auto axes."""
    names = ("data", "classes")
    if kind == "explicit":
        m = jax.make_mesh((2, 4), names)
        assert all(t == jax.sharding.AxisType.Explicit for t in m.axis_types)
        return m
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), names)


def spec_of(loss: Loss, ndim: int, layout: str) -> P:
    """The spec of an input of ``ndim`` dimensions (element-wise: batch only)."""
    if loss.elementwise or ndim == 1:
        return P(LAYOUTS[layout][0])
    return P(*LAYOUTS[layout])


def outputs(loss: Loss, x, y, options):
    """Mean loss, per-element losses, autodiff gradient and closed form."""
    mean, grad = jax.value_and_grad(lambda x: loss.fn(x, y, **options))(x)
    per_element = loss.fn(x, y, **options, reduction="none")
    return mean, per_element, grad, loss.closed_form(x, y, **options)


@functools.cache
def reference(name: str):
    loss = next(entry for entry in LOSSES if entry.name == name)
    x, y, options = loss.every_option()
    return jax.jit(lambda x, y: outputs(loss, x, y, options))(x, y)


def put(loss: Loss, kind: str, layout: str):
    """The every-option inputs with ``x`` and ``y`` split over the mesh."""
    x, y, options = loss.every_option()
    m = mesh(kind)
    xs = jax.device_put(x, NamedSharding(m, spec_of(loss, x.ndim, layout)))
    ys = jax.device_put(y, NamedSharding(m, spec_of(loss, y.ndim, layout)))
    return xs, ys, options


CASES = [
    ("explicit", "both"),
    ("explicit", "classes"),
    ("explicit", "batch"),
    ("auto", "both"),
]
PARAMS = [  # element-wise losses have no class axis: their layouts are the batch
    pytest.param(loss, kind, layout, id=f"{kind}-{layout}-{loss.name}")
    for loss in LOSSES
    for kind, layout in CASES
    if not (loss.elementwise and layout == "classes")
]


@pytest.mark.parametrize("loss, kind, layout", PARAMS)
def test_sharded_equals_single_device(loss: Loss, kind: str, layout: str):
    xs, ys, options = put(loss, kind, layout)
    got = jax.jit(lambda x, y: outputs(loss, x, y, options))(xs, ys)
    assert_tree_allclose(got, reference(loss.name), **TOL)
    mean, per_element, grad, closed = got
    assert len(grad.sharding.device_set) == 8
    if kind == "explicit":
        x_spec = spec_of(loss, xs.ndim, layout)
        assert grad.sharding.spec == x_spec, "gradient not sharded like the input"
        assert closed.sharding.spec == x_spec, "closed form not sharded like the input"
        batch = per_element.sharding.spec[0]
        assert batch == x_spec[0], "per-element losses not split like the batch"


EAGER = ["sparse_softmax_cross_entropy", "softmax_focal_loss", "binary_cross_entropy"]


@each([entry for entry in LOSSES if entry.name in EAGER])
def test_eager_under_set_mesh(loss: Loss):
    """No jit: each operation runs on the Explicit mesh set with `jax.set_mesh`."""
    xs, ys, options = put(loss, "explicit", "both")
    with jax.set_mesh(mesh("explicit")):
        got = outputs(loss, xs, ys, options)
    assert_tree_allclose(got, reference(loss.name), **TOL)


def test_issue_example_sparse_label_smoothing():
    """The call the issue reported failing with ``ShardingTypeError``."""
    m = mesh("explicit")
    r = np.random.default_rng(0)
    z = jnp.asarray(r.standard_normal((8, 16)), jnp.float32)
    y = jnp.asarray(r.integers(0, 16, 8), jnp.int32)
    zs = jax.device_put(z, NamedSharding(m, P("data", "classes")))
    ys = jax.device_put(y, NamedSharding(m, P("data")))

    def f(z, y):
        return jaxce.sparse_softmax_cross_entropy(z, y, label_smoothing=0.1)

    got = jax.jit(jax.value_and_grad(f))(zs, ys)
    assert_tree_allclose(got, jax.jit(jax.value_and_grad(f))(z, y), **TOL)
    assert got[1].sharding.spec == P("data", "classes")


# -- the fused losses on explicitly sharded input, without `mesh=` ------------------

FR = np.random.default_rng(5)
FN, FD, FV = 16, 8, 96
FH = jnp.asarray(FR.standard_normal((FN, FD)), jnp.float32)
FW = jnp.asarray(0.5 * FR.standard_normal((FV, FD)), jnp.float32)
FT = jnp.asarray(FR.standard_normal((FN, FD)), jnp.float32)  # teacher hidden
FY = jnp.asarray(FR.integers(0, FV, FN), jnp.int32).at[3].set(-100)
FA = jnp.asarray(FR.standard_normal(FN), jnp.float32)  # advantages


def fused_objectives(h, w, t, y):
    """Each fused loss, with its gradient w.r.t. hidden and weight."""
    stats = jaxce.linear_token_stats(h, w, jnp.maximum(y, 0), temperature=0.7)
    ce = jaxce.linear_softmax_cross_entropy(
        h, w, y, ignore_index=-100, label_smoothing=0.1
    )
    ce_none = jaxce.linear_softmax_cross_entropy(
        h, w, y, ignore_index=-100, reduction="none", compact=True
    )
    distill = jaxce.linear_distillation_loss(h, w, t, 0.8 * w, kind="jsd")
    objective = (
        ce
        + jnp.mean(FA * stats.logprob + 0.1 * stats.entropy)
        + distill
        + jnp.mean(ce_none)
    )
    return objective, (stats.logprob, ce_none)


@functools.cache
def fused_reference():
    return jax.jit(jax.value_and_grad(fused_objectives, (0, 1), has_aux=True))(
        FH, FW, FT, FY
    )


FUSED_LAYOUTS = {  # hidden / teacher hidden, weight
    "batch": (P("data", None), P(None, None)),
    "vocab": (P(None, None), P("classes", None)),
    "both": (P("data", None), P("classes", None)),
}


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("layout", list(FUSED_LAYOUTS))
def test_fused_losses_on_sharded_input(kind: str, layout: str):
    """Token stats, the fused cross-entropy and the fused distillation, jitted,
    on inputs split over the batch and/or the vocabulary, without ``mesh=``."""
    m = mesh(kind)
    h_spec, w_spec = FUSED_LAYOUTS[layout]
    h = jax.device_put(FH, NamedSharding(m, h_spec))
    t = jax.device_put(FT, NamedSharding(m, h_spec))
    w = jax.device_put(FW, NamedSharding(m, w_spec))
    y = jax.device_put(FY, NamedSharding(m, P(h_spec[0])))
    got = jax.jit(jax.value_and_grad(fused_objectives, (0, 1), has_aux=True))(
        h, w, t, y
    )
    assert_tree_allclose(got, fused_reference(), **TOL)
    (_, (logprob, per_token)), (d_hidden, d_weight) = got
    if kind == "explicit":
        assert d_hidden.sharding.spec == h_spec
        assert d_weight.sharding.spec == w_spec
        assert logprob.sharding.spec == P(h_spec[0])
        assert per_token.sharding.spec == P(h_spec[0])


def test_fused_losses_eager_under_set_mesh():
    m = mesh("explicit")
    h = jax.device_put(FH, NamedSharding(m, P("data", None)))
    t = jax.device_put(FT, NamedSharding(m, P("data", None)))
    w = jax.device_put(FW, NamedSharding(m, P("classes", None)))
    y = jax.device_put(FY, NamedSharding(m, P("data")))
    with jax.set_mesh(m):
        got = jax.value_and_grad(fused_objectives, (0, 1), has_aux=True)(h, w, t, y)
    assert_tree_allclose(got, fused_reference(), **TOL)
