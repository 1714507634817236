"""Options of the fused linear -> cross-entropy: sample ``weights`` and
``normalizer``, ``weight_layout``, memory budgets (issue 11)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxce
from jaxce._fused._engine import prepare_call
from jaxce._fused._engine._plan import BLOCK_ELEMENTS, block_sizes, budget_elements
from tests.helpers import assert_tree_allclose, jit_call

N, D, V = 29, 8, 70
CHUNK = 16
TOL = dict(rtol=2e-5, atol=2e-6)


def _data(seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    h = jax.random.normal(k[0], (N, D))
    w = jax.random.normal(k[1], (V, D)) * 0.5
    b = jax.random.normal(k[2], (V,))
    y = jax.random.randint(k[3], (N,), 0, V).at[::5].set(-100)
    cw = jax.random.uniform(k[4], (V,)) + 0.5
    s = jax.random.uniform(k[5], (N,)) * 2.0
    return h, w, b, y, cw, s


def _unfused(h, w, y, *, bias=None, weight_layout="vd", **kw):
    z = h @ (w.T if weight_layout == "vd" else w)
    z = z if bias is None else z + bias[None, :]
    return jaxce.sparse_softmax_cross_entropy(z, y, **kw)


def _fused(h, w, y, **kw):
    return jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=CHUNK, **kw)


def _grads(fn, h, w, b, cw, s, y, reduction, **kw):
    """Value and gradients w.r.t. hidden, weight, bias, class and sample weights."""

    def scalar(h, w, b, cw, s):
        out = fn(
            h, w, y, bias=b, class_weights=cw, weights=s, reduction=reduction, **kw
        )
        return jnp.sum(out * jnp.linspace(0.5, 1.5, N)) if reduction == "none" else out

    return jax.value_and_grad(scalar, argnums=(0, 1, 2, 3, 4))(h, w, b, cw, s)


OPTS = {
    "plain": {},
    "ignore": {"ignore_index": -100},
    "all": {"ignore_index": -100, "label_smoothing": 0.1, "z_loss": 1e-3},
}


# -- weights and normalizer ------------------------------------------------------


# `weights` against the unfused loss, with every reduction and each other option
# (every pair of levels): tests/test_fused_heads.py.


@pytest.mark.parametrize("reduction", ["sum", "mean", "sum_over_batch_size"])
def test_normalizer_matches_unfused(reduction):
    h, w, b, y, cw, s = _data(1)
    kw = {**OPTS["all"], "normalizer": jnp.float32(7.5)}
    got = _grads(_fused, h, w, b, cw, s, y, reduction, **kw)
    want = _grads(_unfused, h, w, b, cw, s, y, reduction, **kw)
    assert_tree_allclose(got, want, **TOL)
    # the normalizer's own gradient, and the closed form with both options
    dz = jax.grad(lambda z: _fused(h, w, y, weights=s, normalizer=z, **OPTS["all"]))
    dz_ref = jax.grad(
        lambda z: _unfused(h, w, y, bias=0 * b, weights=s, normalizer=z, **OPTS["all"])
    )
    np.testing.assert_allclose(dz(7.5), dz_ref(7.5), rtol=2e-5, atol=2e-6)
    closed = jaxce.closed_form.linear_softmax_cross_entropy(
        h, w, y, bias=b, class_weights=cw, weights=s, reduction=reduction, **kw
    )
    assert_tree_allclose(closed, got[1][:3], **TOL)


def _accumulate(loss_fn, h, w, y, s, k, normalizer):
    """Summed loss, concatenated d_hidden and summed d_weight over k microbatches
    (one compilation for the k of them)."""
    vg = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    total, dhs, dw = 0.0, [], jnp.zeros_like(w)
    for hi, yi, si in zip(
        jnp.split(h, k), jnp.split(y, k), jnp.split(s, k), strict=True
    ):
        val, (dh_i, dw_i) = vg(hi, w, yi, si, normalizer)
        total, dw = total + val, dw + dw_i
        dhs.append(dh_i)
    return total, (jnp.concatenate(dhs), dw)


def test_gradient_accumulation_identity():
    h, w, b, y, cw, s = _data(2)
    h, y, s = h[:28], y[:28], s[:28]  # 4 microbatches of 7
    kw = dict(bias=b, class_weights=cw, ignore_index=-100, label_smoothing=0.1)

    def loss(h, w, y, s, z):
        red = "mean" if z is None else "sum"
        return _fused(h, w, y, weights=s, normalizer=z, reduction=red, **kw)

    full = jax.value_and_grad(loss, argnums=(0, 1))(h, w, y, s, None)
    present = y != -100
    z = jnp.sum(jnp.where(present, s * cw[jnp.where(present, y, 0)], 0.0))
    acc = _accumulate(loss, h, w, y, s, 4, z)
    assert_tree_allclose(acc, full, rtol=1e-6, atol=1e-7)
    per_mean = _accumulate(loss, h, w, y, s, 4, None)
    assert not np.allclose(per_mean[0], full[0], rtol=1e-3)


def test_weights_bad_shape_and_normalizer_with_none():
    h, w, b, y, cw, s = _data()
    with pytest.raises(ValueError, match="weights"):
        jaxce.linear_softmax_cross_entropy(h, w, y, weights=s[:3])
    with pytest.raises(ValueError, match="normalizer"):
        jaxce.linear_softmax_cross_entropy(h, w, y, normalizer=2.0, reduction="none")


def _mesh_axes():
    # 2 x 4 on the 8 CPU devices of the root conftest; 1 x k where there are
    # fewer (a one-GPU machine: benchmarks/gpu.sh runs this file there).
    devices = np.array(jax.devices())
    rows = 2 if devices.size % 2 == 0 else 1
    return dict(mesh=Mesh(devices.reshape(rows, -1), ("b", "v")), batch_axis="b")


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_weights_and_normalizer_on_mesh(reduction):
    h, w, b, y, cw, s = _data(3)
    h, y, s = h[:16], y[:16], s[:16]
    kw = dict(OPTS["all"], vocab_axis="v", **_mesh_axes())
    if reduction == "mean":
        kw["normalizer"] = jnp.float32(5.0)

    def fn(h, w, y, **k):
        return jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=5, **k)

    def grads(f, **k):
        def scalar(h, w, b, cw, s):
            out = f(
                h, w, y, bias=b, class_weights=cw, weights=s, reduction=reduction, **k
            )
            return jnp.sum(out * jnp.linspace(0.5, 1.5, 16))

        return jax.jit(jax.value_and_grad(scalar, argnums=(0, 1, 2, 3, 4)))(
            h, w, b, cw, s
        )

    ref_kw = {
        k: v for k, v in kw.items() if k not in ("mesh", "batch_axis", "vocab_axis")
    }
    assert_tree_allclose(grads(fn, **kw), grads(_unfused, **ref_kw), **TOL)


# -- weight_layout ----------------------------------------------------------------


def _layout_vg(h, w, b, cw, s, y, *, layout, reduction, **kw):
    def scalar(h, w, b):
        out = jaxce.linear_softmax_cross_entropy(
            h, w, y, bias=b, class_weights=cw, weights=s, reduction=reduction,
            weight_layout=layout, **kw,
        )  # fmt: skip
        return jnp.sum(out * jnp.linspace(0.5, 1.5, N)) if reduction == "none" else out

    return jax.value_and_grad(scalar, argnums=(0, 1, 2))(h, w, b)


def _layout_grads(w, y, layout, reduction, **kw):
    """Value and gradients w.r.t. hidden, weight and bias; on a mesh compiled
    (eager ``shard_map`` on 8 devices costs ~8x the compilation)."""
    h, _, b, _, cw, s = _data(4)
    opts = dict(layout=layout, reduction=reduction, **kw)
    if kw.get("mesh") is None:
        return _layout_vg(h, w, b, cw, s, y, **opts)
    return jit_call(_layout_vg, h, w, b, cw, s, y, **opts)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("mesh", [False, True])
def test_dv_layout_equals_vd(reduction, mesh):
    _, w, _, y, _, _ = _data(4)
    kw = dict(OPTS["all"], softcap=3.0, chunk_size=CHUNK)
    if mesh:
        kw.update(vocab_axis="v", chunk_size=5, **_mesh_axes())
        y = y[:N]
    vd = _layout_grads(w, y, "vd", reduction, **kw)
    dv = _layout_grads(w.T, y, "dv", reduction, **kw)
    assert dv[1][1].shape == (D, V)
    assert_tree_allclose(dv, (vd[0], (vd[1][0], vd[1][1].T, vd[1][2])), **TOL)


def test_dv_layout_closed_form_and_errors():
    h, w, b, y, _, _ = _data(5)
    kw = dict(bias=b, ignore_index=-100, label_smoothing=0.1)
    vd = jaxce.closed_form.linear_softmax_cross_entropy(h, w, y, **kw)
    dv = jaxce.closed_form.linear_softmax_cross_entropy(
        h, w.T, y, weight_layout="dv", **kw
    )
    assert_tree_allclose(dv, (vd[0], vd[1].T, vd[2]), **TOL)
    # ValueError; TypeError from the runtime type checker of the test session
    with pytest.raises((ValueError, TypeError), match="weight_layout"):
        jaxce.linear_softmax_cross_entropy(
            h,
            w,
            y,
            weight_layout="DV",  # pyright: ignore[reportArgumentType]
        )
    with pytest.raises(ValueError, match="weight_layout"):
        prepare_call(h, w, y, weight_layout="DV")
    with pytest.raises(ValueError, match="features, vocab"):
        jaxce.linear_softmax_cross_entropy(h, w, y, weight_layout="dv")


@pytest.mark.parametrize(
    "opts",
    [
        dict(chunk_size=128),
        dict(chunk_size=128, reduction="none"),
        dict(chunk_size=128, compact=True),
        dict(chunk_size="auto", memory_budget_bytes=1 << 16),
    ],
    ids=["mean", "none", "compact", "auto"],
)
def test_dv_layout_makes_no_transposed_weight(opts):
    """The compiled gradient of "dv" has no (V, D) array: no transposed copy."""
    n, d, v = 64, 24, 1000  # (V, D) = (1000, 24) matches no other shape here
    h = jnp.ones((n, d))
    w = jnp.ones((d, v))
    y = jnp.zeros((n,), jnp.int32)
    where = jnp.arange(n) % 2 == 0

    def loss(h, w):
        out = jaxce.linear_softmax_cross_entropy(
            h, w, y, weight_layout="dv", where=where, **opts
        )
        return jnp.sum(out)

    for fn in (loss, jax.grad(loss, argnums=(0, 1))):
        hlo = jax.jit(fn).lower(h, w).compile().as_text()
        assert f"f32[{v},{d}]" not in hlo
        assert f"f32[{d},{v}]" in hlo


# -- chunk_size="auto" and memory_budget_bytes ----------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_results_invariant_to_budget_and_chunk(reduction):
    h, w, b, y, cw, s = _data(6)
    kw = dict(OPTS["all"], bias=b, class_weights=cw, weights=s, reduction=reduction)

    def grads(**opts):
        def scalar(h, w):
            out = jaxce.linear_softmax_cross_entropy(h, w, y, **kw, **opts)
            return jnp.sum(out * jnp.linspace(0.5, 1.5, N))

        return jax.value_and_grad(scalar, argnums=(0, 1))(h, w)

    ref = grads()
    for opts in [
        dict(chunk_size="auto"),
        dict(chunk_size="auto", memory_budget_bytes=16 * 300),  # 300 elements
        dict(chunk_size=7, memory_budget_bytes=16 * 5 * V),  # token chunks of 5
        dict(chunk_size=3, memory_budget_bytes=1),
    ]:
        assert_tree_allclose(grads(**opts), ref, rtol=2e-5, atol=2e-5)


def test_block_sizes_from_budget():
    assert budget_elements(256 << 20, jnp.float32) == BLOCK_ELEMENTS
    assert budget_elements(256 << 20, jnp.float64) == BLOCK_ELEMENTS // 2
    blocks = block_sizes(10_000, 50_000, "auto", BLOCK_ELEMENTS)
    assert blocks.chunk_size == 4096
    assert blocks.token_chunk == BLOCK_ELEMENTS // 4096
    assert block_sizes(10, 50, "auto", 100).chunk_size == 50  # clipped to V
    with pytest.raises(TypeError, match="memory_budget_bytes"):
        jaxce.linear_softmax_cross_entropy(
            *_data()[:2], jnp.zeros((N,), jnp.int32), memory_budget_bytes=1.5
        )  # pyright: ignore[reportArgumentType]


def _temp_bytes(budget, reduction):
    n, d, v = 512, 32, 4096
    sd = jax.ShapeDtypeStruct
    args = (sd((n, d), jnp.float32), sd((v, d), jnp.float32), sd((n,), jnp.int32))

    def loss(h, w, y):
        out = jaxce.linear_softmax_cross_entropy(
            h, w, y, reduction=reduction, chunk_size="auto", memory_budget_bytes=budget
        )
        return jnp.sum(out)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_smaller_budget_smaller_temp_memory(reduction):
    big, small = _temp_bytes(64 << 20, reduction), _temp_bytes(2 << 20, reduction)
    assert small < big
    # the logits blocks of the small budget: at most its 2 MiB plus the gradients
    assert small <= (2 << 20) + 2 * (512 + 4096) * 32 * 4


@pytest.mark.parametrize(
    "opts",
    [
        dict(),
        dict(reduction="none"),
        dict(weight_layout="dv"),
        dict(compact=True, weights=True, normalizer=100.0),
    ],
    ids=["mean", "none", "dv", "compact"],
)
def test_budget_memory_independent_of_vocabulary(opts):
    """With a budget, the temp memory of value-and-grad stays flat as V grows 4x."""
    n, d, budget = 512, 32, 4 << 20
    sd = jax.ShapeDtypeStruct
    opts = dict(opts)
    weighted = opts.pop("weights", False)
    layout = opts.get("weight_layout", "vd")

    def temp(v):
        w_shape = (v, d) if layout == "vd" else (d, v)
        args = (sd((n, d), jnp.float32), sd(w_shape, jnp.float32), sd((n,), jnp.int32))

        def loss(h, w, y):
            out = jaxce.linear_softmax_cross_entropy(
                h, w, y, where=jnp.arange(n) % 2 == 0, chunk_size="auto",
                weights=jnp.linspace(0.5, 1.5, n) if weighted else None,
                memory_budget_bytes=budget, **opts,
            )  # fmt: skip
            return jnp.sum(out)

        vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args)
        return vg.compile().memory_analysis().temp_size_in_bytes

    small, big = temp(8192), temp(32768)
    assert big - small <= 0.02 * n * (32768 - 8192) * 4, (small, big)
    assert big <= budget + 8 * n * d * 4, big  # the budget's blocks + (N, D) terms
