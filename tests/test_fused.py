"""Fused linear -> cross-entropy against the unfused loss on explicit logits."""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
import jaxce._fused._engine._plan as fused_blocks
from jaxce._fused._ce_kernels import CEStat
from jaxce._fused._engine import Blocks, Head, Tokens
from jaxce._fused._engine._device import Static
from jaxce._fused._engine._vjp import _streamed
from tests.helpers import assert_tree_allclose

N, D, V = 37, 16, 300  # V = 4 * 64 + 44: ragged against chunk 64
CHUNK = 64
TOL = dict(rtol=2e-5, atol=2e-6)


def _data(n=N, d=D, v=V, seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    h = jax.random.normal(k[0], (n, d))
    w = jax.random.normal(k[1], (v, d)) * 0.5
    b = jax.random.normal(k[2], (v,))
    y = jax.random.randint(k[3], (n,), 0, v)
    y = y.at[::7].set(-100)  # only valid with ignore_index
    cw = jax.random.uniform(k[4], (v,)) + 0.5
    where = jax.random.uniform(k[5], (n,)) > 0.25
    return h, w, b, y, cw, where


def _unfused(h, w, y, *, bias=None, softcap=None, **kw):
    z = h @ w.T if bias is None else h @ w.T + bias[None, :]
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    return jaxce.sparse_softmax_cross_entropy(z, y, **kw)


def _options(case, cw, where):
    return {
        "plain": {},
        "bias": {"bias": True},
        "class_weights": {"class_weights": cw, "bias": True},
        "ignore_index": {"ignore_index": -100},
        "where": {"where": where, "ignore_index": -100},
        "smoothing": {"label_smoothing": 0.1},
        "smoothing_cw": {"label_smoothing": 0.2, "class_weights": cw, "bias": True},
        "z_loss": {"z_loss": 1e-3, "ignore_index": -100},
        "softcap": {"softcap": 2.5, "bias": True},
        "all": {
            "bias": True,
            "class_weights": cw,
            "ignore_index": -100,
            "label_smoothing": 0.1,
            "z_loss": 1e-3,
            "softcap": 4.0,
            "where": where,
        },
    }[case]


def _value_and_grads(fn, h, w, b, y, opts):
    opts = dict(opts)
    use_bias = opts.pop("bias", False)
    reduction = opts.get("reduction", "mean")

    def scalar(h, w, b):
        out = fn(h, w, y, bias=b if use_bias else None, **opts)
        # "none": differentiate a weighted sum so every token's gradient counts.
        return jnp.sum(out * jnp.linspace(0.5, 1.5, N)) if reduction == "none" else out

    return jax.value_and_grad(scalar, argnums=(0, 1, 2))(h, w, b)


# The options against the unfused loss (every pair of their levels, every
# reduction, all at once): tests/test_fused_heads.py (the fused-heads registry).


def _chunk_data():
    h, w, b, y, cw, _ = _data(n=9, v=23, seed=2)
    opts = {"bias": True, "label_smoothing": 0.1, "class_weights": cw}
    return h, w, b, jnp.abs(y) % 23, opts


@functools.cache
def _chunk_reference():
    """The unfused value and gradients of `test_chunk_sizes` (one for its four
    chunk sizes)."""
    h, w, b, y, opts = _chunk_data()
    return _value_and_grads(_unfused, h, w, b, y, opts)


@pytest.mark.parametrize("chunk_size", [2, 7, V, 1000])
def test_chunk_sizes(chunk_size):
    h, w, b, y, opts = _chunk_data()

    def fused(h, w, b):  # compiled: eager walks 12 blocks of 2 op by op (~8x)
        loss = partial(jaxce.linear_softmax_cross_entropy, chunk_size=chunk_size)
        return _value_and_grads(loss, h, w, b, y, opts)

    # _value_and_grads weights "none" by N; not used here.
    assert_tree_allclose(jax.jit(fused)(h, w, b), _chunk_reference(), **TOL)


@pytest.mark.parametrize("token_chunk", [5, 10, 36])
def test_token_blocks_and_class_weight_grads(token_chunk):
    """Ragged token blocks (the internals) and the gradient w.r.t. class weights."""
    h, w, b, y, cw, _ = _data(seed=3)
    y = jnp.abs(y) % V
    t = jnp.linspace(-1.0, 1.0, N)

    blocks = Blocks(chunk_size=CHUNK, token_chunk=token_chunk, row_chunk=N)
    st = Static(blocks, "vd", 3.0, None, False)
    tokens = Tokens(y, jnp.ones((N,), bool))

    def fused(h, w, b, cw):
        s = _streamed(CEStat(True, True), st, Head(h, w, b), (cw,), tokens)
        lse, sw = s.m + s.log_s, s.sw + s.m * jnp.sum(cw)  # sw: sum_c w_c (z_c - m)
        return jnp.sum(1.3 * lse - 0.7 * s.z_y + t * sw)

    def ref(h, w, b, cw):
        z = 3.0 * jnp.tanh((h @ w.T + b[None, :]) / 3.0)
        lse = jax.nn.logsumexp(z, axis=-1)
        zy = jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
        return jnp.sum(1.3 * lse - 0.7 * zy + t * (z @ cw))

    got = jax.value_and_grad(fused, argnums=(0, 1, 2, 3))(h, w, b, cw)
    want = jax.value_and_grad(ref, argnums=(0, 1, 2, 3))(h, w, b, cw)
    assert_tree_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_batch_size"])
@pytest.mark.parametrize("case", ["plain", "class_weights", "all"])
def test_token_path_ragged_chunks(reduction, case, monkeypatch):
    """Scalar reductions (gradients in the forward) with ragged token chunks.

    37 tokens in chunks of 10 (the last one overlaps) and V = 300 in slices of 64
    (ragged); gradients w.r.t. every differentiable input, the hyperparameters
    included, and the value of the plain (non-differentiated) call.
    """
    monkeypatch.setattr(fused_blocks, "BLOCK_ELEMENTS", 10 * V)
    assert fused_blocks.token_chunk_for(N, V) == 10
    h, w, b, y, cw, where = _data(seed=7)
    opts = {**_options(case, cw, where), "reduction": reduction}
    if "ignore_index" not in opts:
        y = jnp.abs(y) % V
    use_bias = opts.pop("bias", False)

    def loss(fn, h, w, b, cw, eps, lam):
        kw = dict(opts)
        for name, value in [
            ("class_weights", cw), ("label_smoothing", eps), ("z_loss", lam)
        ]:  # fmt: skip
            if name in kw:
                kw[name] = value
        return fn(h, w, y, bias=b if use_bias else None, **kw)

    fused = lambda *a, **k: jaxce.linear_softmax_cross_entropy(  # noqa: E731
        *a, chunk_size=CHUNK, **k
    )
    args = (h, w, b, cw, jnp.float32(0.1), jnp.float32(1e-3))
    argnums = (0, 1, 2, 3, 4, 5)
    got = jax.value_and_grad(lambda *a: loss(fused, *a), argnums)(*args)
    want = jax.value_and_grad(lambda *a: loss(_unfused, *a), argnums)(*args)
    assert_tree_allclose(got, want, **TOL)
    np.testing.assert_allclose(loss(fused, *args), want[0], **TOL)
    # Inputs that do not reach the loss get exact zeros.
    for i, used in [(2, use_bias), (3, "class_weights" in opts)]:
        if not used:
            assert not np.any(np.asarray(got[1][i]))


def test_token_chunk_for():
    for n, v, budget in [(37, 300, 3000), (37, 300, 1 << 24), (4097, 4096, 1 << 22),
                         (5, 10**6, 1000), (2048, 32768, 1 << 24)]:  # fmt: skip
        t = fused_blocks.token_chunk_for(n, v, budget)
        assert 1 <= t <= n
        assert t * v <= budget or t == 1
        # as few chunks as the budget allows
        assert -(-n // t) == -(-n // max(1, min(n, budget // v)))


def test_class_weight_gradient_public():
    h, w, b, y, cw, _ = _data(seed=4)
    y = jnp.abs(y) % V
    opts = dict(label_smoothing=0.1, z_loss=1e-3)
    g = jax.grad(
        lambda c: jaxce.linear_softmax_cross_entropy(
            h, w, y, class_weights=c, chunk_size=CHUNK, **opts
        )
    )(cw)
    g_ref = jax.grad(lambda c: _unfused(h, w, y, class_weights=c, **opts))(cw)
    assert_tree_allclose(g, g_ref, **TOL)


def test_nothing_present_gives_zero():
    h, w, b, y, _, _ = _data()
    none = jnp.zeros((N,), bool)
    f = lambda h, w: jaxce.linear_softmax_cross_entropy(h, w, y % V, where=none)  # noqa: E731
    val, (gh, gw) = jax.value_and_grad(f, argnums=(0, 1))(h, w)
    assert float(val) == 0.0
    assert not np.any(np.asarray(gh)) and not np.any(np.asarray(gw))


def test_out_of_range_label_is_nan_on_every_path():
    # V = 10: a present label outside [0, V) makes that token's loss NaN (as in
    # the unfused loss), never a finite number or a wrapped index, on the primal,
    # token (scalar grad), recompute (per-token grad), sharded and closed-form
    # paths; the gradients it reaches are NaN too.
    v = 10
    h, w, b, y, cw, _ = _data(n=6, v=v)
    opts = dict(bias=b, class_weights=cw, label_smoothing=0.1, z_loss=1e-3)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("v",))
    sharded = dict(mesh=mesh, vocab_axis="v")

    def loss(h, w, y, reduction="mean", **kw):
        out = jaxce.linear_softmax_cross_entropy(
            h, w, y, reduction=reduction, chunk_size=3, **opts, **kw
        )
        return jnp.sum(out)

    per_token = jax.jit(lambda y: [
        jaxce.linear_softmax_cross_entropy(h, w, y, reduction="none", **opts, **kw)
        for kw in [dict(chunk_size=3), sharded]
    ])  # fmt: skip
    vg = lambda **kw: jax.jit(jax.value_and_grad(partial(loss, **kw), (0, 1)))  # noqa: E731
    grads = [vg(), vg(reduction="none"), vg(**sharded)]  # token, recompute, sharded
    primal = jax.jit(loss)
    closed = jax.jit(partial(jaxce.closed_form.linear_softmax_cross_entropy, **opts))
    for bad in [v, v + 3, -1]:
        yb = (jnp.abs(y) % v).at[2].set(bad)
        ref = np.asarray(_unfused(h, w, yb, reduction="none", **opts))
        assert np.isnan(ref[2])  # the unfused loss agrees
        for per in per_token(yb):
            per = np.asarray(per)
            assert np.isnan(per[2])
            np.testing.assert_allclose(np.delete(per, 2), np.delete(ref, 2), **TOL)
        assert np.isnan(primal(h, w, yb))
        for fn in grads:
            val, (gh, gw) = fn(h, w, yb)
            assert np.isnan(val) and np.isnan(gh[2]).all() and np.isnan(gw).any()
        dh, dw, db = closed(h, w, yb)
        assert np.isnan(dh[2]).all() and np.isnan(dw).any() and np.isnan(db).any()
    # A label equal to ignore_index is absent, not out of range.
    y_ign = (jnp.abs(y) % v).at[2].set(-100)
    got = loss(h, w, y_ign, ignore_index=-100)
    ref = _unfused(h, w, y_ign, ignore_index=-100, **opts)
    np.testing.assert_allclose(got, ref, **TOL)


def test_traced_smoothing_under_jit():
    h, w, b, y, _, _ = _data()
    y = jnp.abs(y) % V
    f = jax.jit(lambda eps: jaxce.linear_softmax_cross_entropy(
        h, w, y, label_smoothing=eps, chunk_size=CHUNK))  # fmt: skip
    np.testing.assert_allclose(
        f(0.3), _unfused(h, w, y, label_smoothing=0.3), rtol=2e-5
    )


def test_vmap_over_sequences():
    h, w, b, y, _, _ = _data()
    y = jnp.abs(y) % V
    hs, ys = jnp.stack([h, -0.5 * h]), jnp.stack([y, y[::-1]])
    f = lambda h, y: jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=CHUNK)  # noqa: E731
    got = jax.jit(jax.vmap(jax.value_and_grad(f)))(hs, ys)
    ref = jax.jit(jax.value_and_grad(lambda h, y: _unfused(h, w, y)))  # compiled once
    want = [ref(hs[i], ys[i]) for i in (0, 1)]
    assert_tree_allclose(got, jax.tree.map(lambda *x: jnp.stack(x), *want), **TOL)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bfloat16_matches_float32_reference(reduction):
    h, w, b, y, cw, _ = _data(seed=5)
    y = jnp.abs(y) % V
    hb, wb, bb = (x.astype(jnp.bfloat16) for x in (h, w, b))
    opts = dict(label_smoothing=0.1, z_loss=1e-3, softcap=5.0, reduction=reduction)

    def fused(h, w, b):
        return jnp.sum(
            jaxce.linear_softmax_cross_entropy(
                h, w, y, bias=b, chunk_size=CHUNK, **opts
            )
        )

    val, grads = jax.value_and_grad(fused, argnums=(0, 1, 2))(hb, wb, bb)
    assert val.dtype == jnp.bfloat16
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
    # float32 reference on the same (bf16-rounded) inputs.
    up = [x.astype(jnp.float32) for x in (hb, wb, bb)]
    ref_val, ref_grads = jax.value_and_grad(
        lambda h, w, b: jnp.sum(_unfused(h, w, y, bias=b, **opts)), argnums=(0, 1, 2)
    )(*up)
    np.testing.assert_allclose(float(val), float(ref_val), rtol=1e-2)
    for g, r in zip(grads, ref_grads):
        g, r = np.asarray(g, np.float32), np.asarray(r)
        assert np.linalg.norm(g - r) <= 1e-2 * np.linalg.norm(r)


def _count_dots(jaxpr) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "dot_general"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _count_dots(sub)
    return count


def test_forward_does_no_gradient_work():
    h, w, b, y, _, _ = _data()
    y = jnp.abs(y) % V
    f = lambda h, w: jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=CHUNK)  # noqa: E731
    assert _count_dots(jax.make_jaxpr(f)(h, w).jaxpr) == 1
    # Scalar reductions, differentiated: logits, dH and dW in one token pass.
    vg = jax.value_and_grad(f, argnums=(0, 1))
    assert _count_dots(jax.make_jaxpr(vg)(h, w).jaxpr) == 3
    # Only `hidden` differentiated: the dW matmul is skipped (symbolic zeros).
    assert _count_dots(jax.make_jaxpr(jax.grad(f))(h, w).jaxpr) == 2


def test_per_token_reduction_recomputes():
    """``"none"``: O(N) residuals; the backward recomputes the logits (4 matmuls)."""
    h, w, b, y, _, _ = _data()
    y = jnp.abs(y) % V

    def f(h, w):
        out = jaxce.linear_softmax_cross_entropy(
            h, w, y, chunk_size=CHUNK, reduction="none"
        )
        return jnp.sum(out)

    assert _count_dots(jax.make_jaxpr(f)(h, w).jaxpr) == 1
    vg = jax.value_and_grad(f, argnums=(0, 1))
    assert _count_dots(jax.make_jaxpr(vg)(h, w).jaxpr) == 4


def _temp_bytes(fn, n, d, v):
    s = jax.ShapeDtypeStruct
    args = (s((n, d), jnp.float32), s((v, d), jnp.float32), s((n,), jnp.int32))
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_independent_of_vocabulary(monkeypatch):
    n, d, c = 512, 64, 512
    # Token path: (token_chunk, V) logits blocks of at most n * c elements.
    monkeypatch.setattr(fused_blocks, "BLOCK_ELEMENTS", n * c)
    fused = lambda h, w, y: jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=c)  # noqa: E731
    unfused = lambda h, w, y: _unfused(h, w, y)  # noqa: E731
    f_small, f_big = _temp_bytes(fused, n, d, 4096), _temp_bytes(fused, n, d, 16384)
    u_small, u_big = _temp_bytes(unfused, n, d, 4096), _temp_bytes(unfused, n, d, 16384)
    assert u_big - u_small >= n * (16384 - 4096) * 4  # unfused holds (N, V) logits
    assert f_big - f_small <= 0.02 * (u_big - u_small)
    # O(chunk): a few logits blocks plus the (N, D) hidden-gradient accumulator.
    assert f_big <= 8 * n * c * 4 + 4 * n * d * 4


def test_closed_form_matches_autodiff():
    h, w, b, y, cw, where = _data(seed=6)
    for case, reduction in [("all", "mean"), ("smoothing", "none"), ("z_loss", "sum")]:
        opts = {**_options(case, cw, where), "reduction": reduction}
        if "ignore_index" not in opts:
            y = jnp.abs(y) % V
        use_bias = opts.pop("bias", False)
        bias = b if use_bias else None
        dh, dw, db = jaxce.closed_form.linear_softmax_cross_entropy(
            h, w, y, bias=bias, chunk_size=CHUNK, **opts
        )

        def ref(h, w, b):
            out = _unfused(h, w, y, bias=b if use_bias else None, **opts)
            return jnp.sum(out)

        want = jax.grad(ref, argnums=(0, 1, 2))(h, w, b)
        assert_tree_allclose((dh, dw), want[:2], **TOL)
        assert (db is None) == (not use_bias)
        if use_bias:
            assert_tree_allclose(db, want[2], **TOL)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(hidden=jnp.ones((4, 3))), ValueError, "features"),
        (dict(hidden=jnp.ones((4, 2), jnp.bfloat16)), TypeError, "same dtype"),
        (dict(labels=jnp.zeros((5,), jnp.int32)), ValueError, "labels"),
        (dict(labels=jnp.zeros((4,))), TypeError, "labels"),
        (dict(bias=jnp.ones((5,))), ValueError, "bias"),
        (dict(class_weights=jnp.ones((2,))), ValueError, "class_weights"),
        (dict(where=jnp.ones((3,), bool)), ValueError, "where"),
        (dict(label_smoothing=1.0), ValueError, "label_smoothing"),
        (dict(z_loss=-1.0), ValueError, "z_loss"),
        (dict(softcap=0.0), ValueError, "softcap"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(reduction="avg"), (ValueError, TypeError), "reduction"),
        (dict(vocab_axis="v"), ValueError, "mesh"),
    ],
)
def test_bad_input(change, error, match):
    args = dict(
        hidden=jnp.ones((4, 2)), weight=jnp.ones((3, 2)), labels=jnp.zeros(4, int)
    )
    args.update(change)
    h, w, y = args.pop("hidden"), args.pop("weight"), args.pop("labels")
    with pytest.raises(error, match=match):
        jaxce.linear_softmax_cross_entropy(h, w, y, **args)
    if "vocab_axis" not in args:
        with pytest.raises(error, match=match):
            jaxce.closed_form.linear_softmax_cross_entropy(h, w, y, **args)


def test_numpy_integer_options():
    """``ignore_index`` and ``chunk_size`` accept any integer scalar (np.int64)."""
    h, w, b, y, cw, _ = _data()
    kw = dict(bias=b, class_weights=cw, label_smoothing=0.1)
    for reduction in ["mean", "none"]:
        got = jaxce.linear_softmax_cross_entropy(
            h, w, y, ignore_index=np.int64(-100), reduction=reduction, **kw
        )
        want = jaxce.linear_softmax_cross_entropy(
            h, w, y, ignore_index=-100, reduction=reduction, **kw
        )
        np.testing.assert_array_equal(got, want)
    got = jaxce.closed_form.linear_softmax_cross_entropy(
        h, w, y, ignore_index=np.int64(-100), **kw
    )
    want = jaxce.closed_form.linear_softmax_cross_entropy(
        h, w, y, ignore_index=-100, **kw
    )
    assert_tree_allclose(got, want, rtol=0, atol=0)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("v",))
    got = jaxce.linear_softmax_cross_entropy(
        h, w, y, ignore_index=np.int64(-100), mesh=mesh, vocab_axis="v", **kw
    )
    np.testing.assert_allclose(
        got, jaxce.linear_softmax_cross_entropy(h, w, y, ignore_index=-100, **kw), **TOL
    )
    # chunk_size: a NumPy integer is taken as the int it holds.
    y = jnp.abs(y) % V
    got = jax.value_and_grad(
        lambda h: jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=np.int64(3))
    )(h)
    want = jax.value_and_grad(
        lambda h: jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=3)
    )(h)
    assert_tree_allclose(got, want, rtol=0, atol=0)
    dh, _, _ = jaxce.closed_form.linear_softmax_cross_entropy(
        h, w, y, chunk_size=np.int64(3)
    )
    np.testing.assert_array_equal(
        dh, jaxce.closed_form.linear_softmax_cross_entropy(h, w, y, chunk_size=3)[0]
    )
    for bad, error in [(np.int64(0), ValueError), (3.0, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="chunk_size"):
            jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=bad)


def test_rank_errors():
    with pytest.raises((TypeError, ValueError), match="hidden"):
        jaxce.linear_softmax_cross_entropy(
            jnp.ones(4), jnp.ones((3, 2)), jnp.zeros(4, int)
        )
