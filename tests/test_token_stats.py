"""`jaxce.linear_token_stats` and its closed form against the unfused statistics.

Compilation dominates the run time (the CPU is shared), so every value and
gradient goes through one jitted function, `_vg`, whose arrays (``where``,
labels, coefficients) are arguments: tests that share a configuration and shapes
share its compilation.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
import jaxce._fused._engine._plan as fused_blocks
from tests.helpers import assert_finite, assert_tree_allclose

N, D, V = 37, 16, 300  # V = 4 * 64 + 44: ragged against chunk 64
CHUNK = 64
TOL = dict(rtol=2e-5, atol=2e-5)


@partial(jax.jit, static_argnames=("n", "d", "v"))
def _data(n=N, d=D, v=V, seed=0):
    k = jax.random.split(jax.random.key(seed), 8)
    h = jax.random.normal(k[0], (n, d))
    w = jax.random.normal(k[1], (v, d)) * 0.5
    b = jax.random.normal(k[2], (v,))
    y = jax.random.randint(k[3], (n,), 0, v)
    where = jax.random.uniform(k[4], (n,)) > 0.25
    coef = tuple(jax.random.normal(k[5 + i], (n,)) for i in range(3))
    return h, w, b, y, where, coef


def _logits(h, w, bias=None, softcap=None, temperature=1.0):
    z = h @ w.T if bias is None else h @ w.T + bias[None, :]
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    return z / temperature


def _reference(h, w, y, *, bias=None, temperature=1.0, softcap=None, where=None):
    """Unfused statistics from the full ``(N, V)`` logits (``jax.nn.log_softmax``)."""
    z = _logits(h, w, bias, softcap, temperature)
    logp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(logp)
    entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    bad = (y < 0) | (y >= w.shape[0])
    lp = jnp.take_along_axis(logp, jnp.clip(y, 0, w.shape[0] - 1)[:, None], 1)[:, 0]
    lp = jnp.where(bad, jnp.nan, lp)
    lse = jax.nn.logsumexp(z, axis=-1)
    argmax = jnp.argmax(_logits(h, w, bias, softcap), axis=-1).astype(jnp.int32)
    out = (lp, entropy, lse)
    if where is not None:
        out = tuple(jnp.where(where, x, 0.0) for x in out)
        argmax = jnp.where(where, argmax, 0)
    return jaxce.TokenStats(*out, argmax)


def _fused(h, w, y, *, chunk=CHUNK, **kw):
    return jaxce.linear_token_stats(h, w, y, chunk_size=chunk, **kw)


def _dv(h, w, y, **kw):
    return _fused(h, w, y, weight_layout="dv", **kw)


def _objective(fn, h, w, b, y, coef, where, **opts):
    """``sum(a lp + b H + c lse)`` (in float32) and the statistics."""
    s = fn(h, w, y, bias=b, where=where, **opts)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    a, bb, c = coef
    total = a * f32(s.logprob) + bb * f32(s.entropy) + c * f32(s.logsumexp)
    return jnp.sum(total), s


@partial(
    jax.jit,
    static_argnames=(
        "fn", "tag", "temperature", "softcap", "chunk", "memory_budget_bytes"
    ),
)  # fmt: skip
def _vg(h, w, b, y, coef, where, *, fn, tag=None, **opts):
    """``((value, stats), (d_hidden, d_weight, d_bias))``; ``b`` / ``where`` may be
    None. ``tag`` only separates compilations (block sizes patched by a test)."""
    del tag
    f = partial(_objective, fn, **opts)
    return jax.value_and_grad(f, (0, 1, 2), has_aux=True)(h, w, b, y, coef, where)


def _run(fn, h, w, b, y, coef, opts, **static):
    """`_vg` with the test options ``bias`` (bool) and ``where`` (array or None)."""
    opts = dict(opts)
    b = b if opts.pop("bias", False) else None
    where = opts.pop("where", None)
    return _vg(h, w, b, y, coef, where, fn=fn, **opts, **static)


def _jit(fn, *args, **kw):
    """``fn(*args, **kw)`` compiled (keyword arrays as constants)."""
    return jax.jit(lambda *a: fn(*a, **kw))(*args)


CASES = {
    "plain": {},
    "temperature_0.7": {"temperature": 0.7},
    "temperature_1.5": {"temperature": 1.5, "bias": True},
    "softcap": {"softcap": 2.5, "bias": True},
    "all": {"bias": True, "temperature": 0.7, "softcap": 4.0, "where": True},
}


def _opts(case, where):
    opts = dict(CASES[case])
    if opts.pop("where", False):
        opts["where"] = where
    return opts


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_unfused(case):
    h, w, b, y, where, coef = _data()
    opts = _opts(case, where)
    got = _run(_fused, h, w, b, y, coef, opts)
    want = _run(_reference, h, w, b, y, coef, opts)
    assert_tree_allclose(got, want, **TOL)
    (_, s), _ = got
    assert [x.dtype for x in s] == [jnp.float32] * 3 + [jnp.int32]


def test_absent_tokens_are_zero_with_zero_gradient():
    h, w, b, y, where, coef = _data(seed=4)
    opts = _opts("all", where)
    (_, s), (dh, dw, db) = _run(_fused, h, w, b, y, coef, opts)
    for x in s:
        assert (x[~where] == 0).all()
    assert (dh[~where] == 0).all() and (dh[where] != 0).any()
    opts["where"] = jnp.zeros(N, bool)  # nothing present
    (val, s), grads = _run(_fused, h, w, b, y, coef, opts)
    assert val == 0
    for x in (*s, *grads):
        assert (x == 0).all()


def test_argmax_matches_jnp_argmax_with_ties():
    h, w, b, y, where, coef = _data()
    where = where.at[:5].set(True)
    # Class 250 (another chunk) and class 7 duplicate class 3: exact ties.
    w = w.at[250].set(w[3]).at[7].set(w[3])
    h = h.at[:5].set(w[3] * 4.0)  # tokens whose greedy class is the tied one
    b = b.at[jnp.array([3, 7, 250])].set(1.0)
    for case in ["plain", "softcap", "all"]:
        opts = _opts(case, where)
        (_, s), _ = _run(_fused, h, w, b, y, coef, opts)
        (_, want), _ = _run(_reference, h, w, b, y, coef, opts)
        np.testing.assert_array_equal(s.argmax, want.argmax)
        assert (s.argmax[:5] == 3).all()


def test_chunk_size_does_not_change_results():
    h, w, b, y, where, coef = _data(seed=1)
    opts = _opts("all", where)
    want = _run(_fused, h, w, b, y, coef, opts)
    for chunk in [1, 299, None]:  # 299: the last block overlaps; None: one block
        got = _run(_fused, h, w, b, y, coef, opts, chunk=chunk)
        assert_tree_allclose(got, want, **TOL)
    # "auto": V classes by default; 128 (ragged against V) from a 2000-element
    # budget; a 1-byte budget gives blocks of 128 classes by all tokens.
    for budget in [None, 16 * 2000, 1]:
        got = _run(
            _fused, h, w, b, y, coef, opts, chunk="auto", memory_budget_bytes=budget
        )
        assert_tree_allclose(got, want, **TOL)


def test_token_blocks(monkeypatch):
    """Several (ragged) token blocks per vocabulary block give the same results."""
    monkeypatch.setattr(fused_blocks, "MIN_TOKEN_BLOCK", 8)
    monkeypatch.setattr(fused_blocks, "BLOCK_ELEMENTS", 10 * CHUNK)  # 10 tokens
    assert fused_blocks.block_sizes(N, V, CHUNK).token_chunk == 10
    h, w, b, y, where, coef = _data(seed=2)
    opts = _opts("all", where)
    got = _run(_fused, h, w, b, y, coef, opts, tag="token_blocks")
    want = _run(_reference, h, w, b, y, coef, opts)
    assert_tree_allclose(got, want, **TOL)


def test_dv_layout_equals_vd_with_transposed_weight():
    h, w, b, y, where, coef = _data(seed=3)
    opts = _opts("all", where)
    (v_dv, s_dv), (dh_dv, dw_dv, db_dv) = _run(_dv, h, w.T, b, y, coef, opts)
    (v_vd, s_vd), (dh_vd, dw_vd, db_vd) = _run(_fused, h, w, b, y, coef, opts)
    assert dw_dv.shape == (D, V)
    assert_tree_allclose(
        (v_dv, s_dv, dh_dv, dw_dv.T, db_dv),
        (v_vd, s_vd, dh_vd, dw_vd, db_vd),
        rtol=1e-6,
        atol=1e-6,
    )


def test_dv_layout_makes_no_transposed_weight():
    """The compiled statistics and gradients of "dv" have no (V, D) array."""
    n, d, v = 64, 24, 1000  # (V, D) = (1000, 24) matches no other shape here
    h, w, y = jnp.ones((n, d)), jnp.ones((d, v)), jnp.zeros((n,), jnp.int32)

    def objective(h, w):
        s = jaxce.linear_token_stats(h, w, y, chunk_size=128, weight_layout="dv")
        return jnp.sum(s.logprob + 0.1 * s.entropy)

    for fn in (objective, jax.grad(objective, argnums=(0, 1))):
        hlo = jax.jit(fn).lower(h, w).compile().as_text()
        assert f"f32[{v},{d}]" not in hlo
        assert f"f32[{d},{v}]" in hlo


def test_bfloat16_close_to_float32():
    h, w, b, y, where, coef = _data(seed=5)
    opts = _opts("all", where)
    lo = tuple(x.astype(jnp.bfloat16) for x in (h, w, b))
    (_, s), grads = _run(_fused, *lo, y, coef, opts)
    assert [x.dtype for x in s[:3]] == [jnp.bfloat16] * 3
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
    # Computed in float32: close to float32 on the bf16-rounded inputs ...
    up = tuple(x.astype(jnp.float32) for x in lo)
    (_, s_up), g_up = _run(_fused, *up, y, coef, opts)
    assert_tree_allclose(s[:3], s_up[:3], rtol=1e-2, atol=1e-2)
    # ... and within 1e-2 relative of the float32 inputs' results: the largest
    # error at most 1e-2 of the largest magnitude, statistic by statistic and
    # gradient by gradient.
    (_, s32), g32 = _run(_fused, h, w, b, y, coef, opts)
    for got, ref in [*zip(s[:3], s32[:3]), *zip(grads, g32)]:
        err = jnp.max(jnp.abs(got.astype(jnp.float32) - ref))
        assert err <= 1e-2 * jnp.max(jnp.abs(ref)), (err, jnp.max(jnp.abs(ref)))
    for g, g_ref in zip(grads, g_up):
        err = jnp.max(jnp.abs(g.astype(jnp.float32) - g_ref))
        assert err <= 1e-2 * jnp.max(jnp.abs(g_ref)), err


def test_extreme_logits_give_finite_values_and_gradients():
    h, w, b, y, where, coef = _data(seed=6)
    h = h * 1e3  # logits ~ 1e3: the softmax is one-hot in float32
    opts = _opts("temperature_1.5", where)
    got = _run(_fused, h, w, b, y, coef, opts)
    assert_finite(got)
    want = _run(_reference, h, w, b, y, coef, opts)
    assert_tree_allclose(got[0], want[0], rtol=1e-5, atol=1e-2)
    assert_tree_allclose(got[1], want[1], rtol=1e-4, atol=1e-2)


def test_neg_inf_bias_bans_tokens():
    """``-inf`` bias entries leave the softmax, with finite statistics and grads."""
    h, w, b, y, _, coef = _data(seed=7)
    banned = jnp.arange(V) % 3 == 0
    b = jnp.where(banned, -jnp.inf, b)
    y = jnp.where(banned[y], (y + 1) % V, y)
    opts = _opts("temperature_1.5", None)
    (_, s), (dh, dw, db) = _run(_fused, h, w, b, y, coef, opts)
    assert_finite((s, dh, dw))
    keep = ~banned
    y_kept = jnp.cumsum(keep)[y] - 1
    (_, s_ref), (dh_ref, dw_ref, db_ref) = _run(
        _reference, h, w[keep], b[keep], y_kept, coef, opts
    )
    assert_tree_allclose(s[:3], s_ref[:3], **TOL)
    assert_tree_allclose((dh, dw[keep], db[keep]), (dh_ref, dw_ref, db_ref), **TOL)
    assert (dw[banned] == 0).all() and (db[banned] == 0).all()
    # With a soft cap, a -inf logit is capped to -c (documented): in the softmax.
    capped = dict(opts, softcap=2.5)
    (_, s_cap), g_cap = _run(_fused, h, w, b, y, coef, capped)
    (_, s_cap_ref), g_cap_ref = _run(_reference, h, w, b, y, coef, capped)
    assert_tree_allclose((s_cap[:3], g_cap), (s_cap_ref[:3], g_cap_ref), **TOL)
    (_, s_kept), _ = _run(_reference, h, w[keep], b[keep], y_kept, coef, capped)
    assert (s_cap.logsumexp > s_kept.logsumexp + 1e-3).all()  # banned ones count


def test_out_of_range_label_gives_nan_logprob():
    h, w, b, y, _, coef = _data(seed=8)
    y = y.at[0].set(-1).at[1].set(V).at[2].set(V + 5)
    where = jnp.ones(N, bool).at[2].set(False)  # out of range but absent: 0
    opts = _opts("all", where)
    (val, s), grads = _run(_fused, h, w, b, y, coef, opts)
    assert np.isnan(s.logprob[:2]).all() and s.logprob[2] == 0
    assert np.isfinite(s.logprob[3:]).all()
    assert_finite((s.entropy, s.logsumexp))
    (_, ref), _ = _run(_reference, h, w, b, y.at[:2].set(0), coef, opts)
    assert_tree_allclose((s.entropy, s.logsumexp), (ref.entropy, ref.logsumexp), **TOL)
    # The value is NaN, and so are the gradients through the logprob ...
    assert np.isnan(val) and np.isnan(grads[0][:2]).all()
    # ... but the entropy does not depend on the label: a finite gradient.
    ent = lambda h: jnp.sum(_fused(h, w, y, where=where).entropy)  # noqa: E731
    assert_finite(jax.jit(jax.grad(ent))(h))


def test_vmap_over_sequences():
    h, w, b, y, where, coef = _data(seed=9)
    h2, _, _, y2, where2, coef2 = _data(seed=10)
    opts = _opts("all", where)
    del opts["where"], opts["bias"]
    f = partial(_objective, _fused, **opts)
    vg = jax.value_and_grad(f, (0, 1, 2), has_aux=True)
    axes = (0, None, None, 0, 0, 0)
    batched = jax.jit(jax.vmap(vg, in_axes=axes))(
        jnp.stack([h, h2]),
        w,
        b,
        jnp.stack([y, y2]),
        jax.tree.map(lambda *x: jnp.stack(x), coef, coef2),
        jnp.stack([where, where2]),
    )
    for i, args in enumerate([(h, y, coef, where), (h2, y2, coef2, where2)]):
        hi, yi, ci, mi = args
        want = _run(_fused, hi, w, b, yi, ci, {**opts, "bias": True, "where": mi})
        assert_tree_allclose(jax.tree.map(lambda x: x[i], batched), want, **TOL)


# -- closed form ---------------------------------------------------------------


@partial(jax.jit, static_argnames=("temperature", "softcap"))
@jax.grad
def _autodiff_logits_grad(x, y, a, b, c, temperature=1.0, softcap=None, where=None):
    """``jax.grad`` of ``sum(a lp + b H + c lse)`` w.r.t. explicit logits ``x``."""
    s = _reference(
        x, jnp.eye(x.shape[1]), y, temperature=temperature, softcap=softcap,
        where=where,
    )  # fmt: skip
    return jnp.sum(a * s.logprob + b * s.entropy + c * s.logsumexp)


_closed_form = jax.jit(
    jaxce.closed_form.token_stats_logits_grad,
    static_argnames=("temperature", "softcap"),
)


@pytest.mark.parametrize("case", ["plain", "temperature_1.5", "all"])
def test_closed_form_matches_autodiff(case):
    h, w, b, y, where, (a, bb, c) = _data(seed=11)
    opts = _opts(case, where)
    use_bias = opts.pop("bias", False)
    x = _jit(_logits, h, w, b if use_bias else None)
    got = _closed_form(
        x, y, logprob_weight=a, entropy_weight=bb, logsumexp_weight=c, **opts
    )
    want = _autodiff_logits_grad(x, y, a, bb, c, **opts)
    assert_tree_allclose(got, want, **TOL)
    if case != "all":
        return
    # The chain rule through the linear layer gives the fused gradients.
    _, fused = _run(_fused, h, w, b, y, (a, bb, c), _opts(case, where))
    chain = _jit(lambda g, h, w: (g @ w, g.T @ h, g.sum(0)), got, h, w)
    assert_tree_allclose(chain, fused, **TOL)


def test_closed_form_scalar_weights_and_batch_axes():
    h, w, b, y, _, _ = _data(n=12, v=50, seed=12)
    x2 = _jit(_logits, h, w, b)
    x, y2 = x2.reshape(3, 4, 50), y.reshape(3, 4)
    got = _closed_form(x, y2, entropy_weight=0.1)
    zero = jnp.float32(0)
    want = _autodiff_logits_grad(x2, y, zero, jnp.float32(0.1), zero)
    assert_tree_allclose(got, want.reshape(3, 4, 50), **TOL)
    # Entropy only: an out-of-range label does not matter; with logprob: NaN row.
    bad = y2.at[0, 0].set(50)
    g = _closed_form(x, bad, entropy_weight=0.1)
    assert_tree_allclose(g, got, rtol=0, atol=0)
    g = _closed_form(x, bad, logprob_weight=1.0)
    assert np.isnan(g[0, 0]).all() and np.isfinite(g[1:]).all()


# -- errors and memory -----------------------------------------------------------


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(hidden=jnp.ones((4, 3))), ValueError, "features"),
        (dict(weight=jnp.ones((3, 2)), weight_layout="dv"), ValueError, "features"),
        (dict(hidden=jnp.ones((4, 2), jnp.bfloat16)), TypeError, "same dtype"),
        (dict(labels=jnp.zeros((5,), jnp.int32)), ValueError, "labels"),
        (dict(labels=jnp.zeros((4,))), TypeError, "labels"),
        (dict(bias=jnp.ones((5,))), ValueError, "bias"),
        (dict(where=jnp.ones((3,), bool)), ValueError, "where"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(softcap=0.0), ValueError, "softcap"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size="AUTO"), (ValueError, TypeError), "chunk_size"),
        (dict(memory_budget_bytes=0), ValueError, "memory_budget_bytes"),
        (dict(weight_layout="VD"), (ValueError, TypeError), "weight_layout"),
    ],
)
def test_bad_input(change, error, match):
    args = dict(
        hidden=jnp.ones((4, 2)), weight=jnp.ones((3, 2)), labels=jnp.zeros(4, int)
    )
    args.update(change)
    h, w, y = args.pop("hidden"), args.pop("weight"), args.pop("labels")
    with pytest.raises(error, match=match):
        jaxce.linear_token_stats(h, w, y, **args)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(softcap=-1.0), "softcap"),
        (dict(labels=jnp.zeros((3,), int)), "labels"),
        (dict(logprob_weight=jnp.ones(3)), "logprob_weight"),
    ],
)
def test_closed_form_bad_input(change, match):
    args = dict(logits=jnp.ones((4, 5)), labels=jnp.zeros(4, int))
    args.update(change)
    x, y = args.pop("logits"), args.pop("labels")
    # A labels shape mismatch is a TypeError under the tests' jaxtyping hook.
    with pytest.raises((ValueError, TypeError), match=match):
        jaxce.closed_form.token_stats_logits_grad(x, y, **args)


def _temp_bytes(fn, n, d, v):
    s = jax.ShapeDtypeStruct
    args = (s((n, d), jnp.float32), s((v, d), jnp.float32), s((n,), jnp.int32))

    def objective(h, w, y):
        st = fn(h, w, y)
        return jnp.sum(st.logprob + 0.1 * st.entropy + 0.01 * st.logsumexp)

    vg = jax.value_and_grad(objective, argnums=(0, 1))
    return jax.jit(vg).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_independent_of_vocabulary():
    n, d, c = 64, 16, 64
    fused = lambda h, w, y: jaxce.linear_token_stats(h, w, y, chunk_size=c)  # noqa: E731
    unfused = lambda h, w, y: _reference(h, w, y)  # noqa: E731
    f_small, f_big = _temp_bytes(fused, n, d, 512), _temp_bytes(fused, n, d, 4096)
    u_big = _temp_bytes(unfused, n, d, 4096)
    assert u_big >= n * 4096 * 4  # the unfused gradient holds (N, V) logits
    assert f_big < 2 * f_small, (f_small, f_big)  # V x 8: temp memory < x 2
    assert f_big - f_small <= 0.02 * n * (4096 - 512) * 4
    # O(block): a few (N, chunk) logits blocks plus (N, D) accumulators.
    assert f_big <= 8 * n * c * 4 + 4 * n * d * 4, f_big
