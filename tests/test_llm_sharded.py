"""`linear_token_stats` and `linear_distillation_loss` with ``mesh=`` (issue 11).

Vocabulary- and data-parallel under ``shard_map`` on the 8 CPU devices of the
root conftest: the statistics, losses and gradients equal a single device (to
2e-5 in float32) on Auto and Explicit meshes, for sizes the axes divide and
sizes they do not (padded inside), both weight layouts; the argmax keeps the
first index across shards; a shard with every class banned (``-inf`` bias) stays
finite; the compiled HLO all-gathers nothing the size of the weight; gradients
come back split like their inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxce
from tests.helpers import assert_tree_allclose, covering, jit_call
from tests.test_sharded import axes, collectives, meshes

TOL = dict(rtol=2e-5, atol=2e-5)
MESHES = ["vocab8", "batch2_vocab4", "batch8", "explicit_b2_v2x2"]
SIZES = {"even": (16, 96), "padded": (13, 101)}
D = 8


@functools.cache
def inputs(size: str):
    n, v = SIZES[size]
    r = np.random.default_rng(7)
    f = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)  # noqa: E731
    h, w, b, ht, wt = f(n, D), 0.7 * f(v, D), f(v), f(n, D + 3), 0.7 * f(v, D + 3)
    y = jnp.asarray(r.integers(0, v, n), jnp.int32)
    where = jnp.arange(n) % 5 != 2
    adv = f(n)
    return h, w, b, ht, wt, y, where, adv


# -- token statistics -----------------------------------------------------------


def stats_objective(h, w, b, y, where, adv, weight_layout="vd", **kw):
    s = jaxce.linear_token_stats(
        h, w, y, bias=b, where=where, temperature=0.7, softcap=6.0, chunk_size=8,
        weight_layout=weight_layout, **kw,
    )  # fmt: skip
    value = jnp.sum(adv * s.logprob + 0.2 * s.entropy + 0.05 * s.logsumexp)
    return value, s


@functools.cache
def stats_run(size: str, layout: str, **kw):
    """Value, statistics and gradients, compiled; memoised (the one-device
    results are the reference of several tests)."""
    h, w, b, _, _, y, where, adv = inputs(size)
    w = w if layout == "vd" else w.T
    f = functools.partial(stats_objective, weight_layout=layout, **kw)
    vg = jax.value_and_grad(f, (0, 1, 2), has_aux=True)
    return jax.jit(lambda h, w, b: vg(h, w, b, y, where, adv))(h, w, b)


# Every pair of (mesh, size, layout): each mesh with both sizes and both layouts,
# each size with both layouts (the padded "dv" on a vocabulary mesh); 8 of the
# 16 combinations. The layout is read by the per-block matmul only, the padding
# by the mesh wrapper: independent by construction.
STATS_CASES = covering(
    [
        ("vocab8", "even", "vd"),
        ("vocab8", "padded", "dv"),
        ("batch2_vocab4", "even", "dv"),
        ("batch2_vocab4", "padded", "vd"),
        ("batch8", "even", "vd"),
        ("batch8", "padded", "dv"),
        ("explicit_b2_v2x2", "even", "dv"),
        ("explicit_b2_v2x2", "padded", "vd"),
    ],
    MESHES, list(SIZES), ["vd", "dv"],
)  # fmt: skip


@pytest.mark.parametrize(
    "mesh_name, size, layout", STATS_CASES, ids=["-".join(c) for c in STATS_CASES]
)
def test_token_stats_on_mesh_equal_single_device(mesh_name, size, layout):
    got = stats_run(size, layout, **axes(mesh_name))
    want = stats_run(size, layout)
    assert_tree_allclose(got, want, **TOL)
    (_, s), _ = got
    np.testing.assert_array_equal(s.argmax, want[0][1].argmax)


def test_token_stats_argmax_ties_and_banned_shard():
    # Every class ties: the first index wins across shards; then classes 0..23
    # (the first shards of an 8-way split of 96) banned: finite, argmax >= 24.
    n, v = 16, 96
    h = jnp.ones((n, D))
    w = jnp.ones((v, D))
    y = jnp.arange(n) * 5
    kw = axes("vocab8")
    s = jit_call(jaxce.linear_token_stats, h, w, y, **kw)
    np.testing.assert_array_equal(s.argmax, np.zeros(n))
    r = np.random.default_rng(3)
    w = jnp.asarray(r.standard_normal((v, D)), jnp.float32)
    bias = jnp.where(jnp.arange(v) < 24, -jnp.inf, 0.0)
    y = 24 + jnp.arange(n)
    got = jit_call(_banned_vg, h, w, y, bias, **kw)
    want = jit_call(_banned_vg, h, w, y, bias)
    assert_tree_allclose(got, want, **TOL)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got))
    assert np.all(np.asarray(got[0][1].argmax) >= 24)


def _banned_objective(h, w, y, bias, **kw):
    s = jaxce.linear_token_stats(h, w, y, bias=bias, **kw)
    return jnp.sum(s.logprob + s.entropy), s


def _banned_vg(h, w, y, bias, **kw):
    return jax.value_and_grad(_banned_objective, (0, 1), has_aux=True)(
        h, w, y, bias, **kw
    )


def test_blocks_of_padding_only():
    # V = 5 over 8 devices: three devices hold padding classes only (their
    # block's max is -inf); statistics, losses and gradients stay exact.
    h, _, _, ht, _, y, where, adv = inputs("even")
    r = np.random.default_rng(11)
    w = jnp.asarray(r.standard_normal((5, D)), jnp.float32)
    wt = jnp.asarray(r.standard_normal((5, D + 3)), jnp.float32)
    b = jnp.asarray(r.standard_normal(5), jnp.float32)
    y = y % 5

    def stats(h, w, b, **kw):
        return stats_objective(h, w, b, y, where, adv, **kw)

    def distill(h, w, b, **kw):
        return distill_objective(
            h, w, b, ht, wt, where, None, "jsd", 0.3, "none", **kw
        ), None

    for f in (stats, distill):
        vg = jax.value_and_grad(f, (0, 1, 2), has_aux=True)
        got = jax.jit(lambda *a: vg(*a, **axes("vocab8")))(h, w, b)
        assert_tree_allclose(got, vg(h, w, b), **TOL)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got))


def test_token_stats_gradients_split_like_inputs():
    mesh, ba, va = meshes()["explicit_data2_vocab4"]
    h, w, b, _, _, y, where, adv = inputs("even")
    put = lambda x, *s: jax.device_put(x, NamedSharding(mesh, P(*s)))  # noqa: E731
    hs, ws, bs = put(h, ba, None), put(w, va, None), put(b, va)
    args = (put(y, ba), put(where, ba), put(adv, ba))
    f = functools.partial(stats_objective, mesh=mesh, batch_axis=ba, vocab_axis=va)
    (value, s), grads = jax.jit(jax.value_and_grad(f, (0, 1, 2), has_aux=True))(
        hs, ws, bs, *args
    )
    assert [g.sharding.spec for g in grads] == [P(ba, None), P(va, None), P(va)]
    assert s.logprob.sharding.spec == P(ba)
    want = stats_run("even", "vd")
    assert_tree_allclose(((value, s), grads), want, **TOL)


def test_token_stats_mesh_errors():
    h, w, _, _, _, y, _, _ = inputs("even")
    with pytest.raises(ValueError, match="need a `mesh`"):
        jaxce.linear_token_stats(h, w, y, vocab_axis="v")
    mesh, ba, _ = meshes()["explicit_data2_vocab4"]  # explicitly sharded input too
    hs = jax.device_put(h, NamedSharding(mesh, P(ba, None)))
    with pytest.raises(ValueError, match="need a `mesh`"):
        jaxce.linear_token_stats(hs, w, y, batch_axis=ba)
    mesh = meshes()["vocab8"][0]
    with pytest.raises(ValueError, match="vocab_axis.*not in the mesh"):
        jaxce.linear_token_stats(h, w, y, mesh=mesh, vocab_axis="nope")


# -- the compiled HLO: nothing the size of the weight is all-gathered ----------


BIG_N, BIG_V = 64, 4096


def _hlo_collectives(fn, n, v, d_t=None):
    h, w = jnp.ones((n, D)), jnp.ones((v, D))
    extra = () if d_t is None else (jnp.ones((n, d_t)), jnp.ones((v, d_t)))
    f = jax.jit(jax.value_and_grad(fn, (0, 1)))
    return collectives(f.lower(h, w, *extra).compile().as_text())


@pytest.mark.parametrize("mesh_name", ["vocab8", "batch2_vocab4"])
def test_token_stats_hlo_gathers_no_weight(mesh_name):
    y = jnp.zeros((BIG_N,), jnp.int32)

    def fn(h, w):
        s = jaxce.linear_token_stats(h, w, y, **axes(mesh_name))
        return jnp.sum(s.logprob + s.entropy)

    ops = _hlo_collectives(fn, BIG_N, BIG_V)
    assert ops  # it is sharded: there are collectives
    # no all-gather of an eighth of the weight (or logits); nothing its size at all
    assert not [c for op, c in ops if op == "all-gather" and c >= BIG_V * D // 8]
    assert max(c for _, c in ops) < BIG_V * D


# -- fused distillation --------------------------------------------------------

KIND_BETAS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)]


def distill_objective(hs, ws, bs, ht, wt, where, weights, kind, beta, reduction, **kw):
    n = hs.shape[0]
    out = jaxce.linear_distillation_loss(
        hs, ws, ht, wt, student_bias=bs, teacher_bias=0.5 * bs, kind=kind,
        beta=beta, temperature=1.7, where=where, weights=weights,
        reduction=reduction, chunk_size=8, **kw,
    )  # fmt: skip
    return jnp.sum(out * jnp.linspace(0.5, 1.5, n)) if reduction == "none" else out


@functools.cache
def distill_run(size: str, kind: str, beta: float, reduction: str, **kw):
    """Value and gradients, compiled; memoised (the one-device results are the
    reference of several tests)."""
    hs, ws, bs, ht, wt, _, where, adv = inputs(size)
    weights = jnp.abs(adv) + 0.1
    f = functools.partial(
        distill_objective, kind=kind, beta=beta, reduction=reduction, **kw
    )
    vg = jax.value_and_grad(f, (0, 1, 2, 3, 4))
    return jax.jit(lambda *a: vg(*a, where, weights))(hs, ws, bs, ht, wt)


# Every pair of (mesh, size, kind, reduction), 12 of the 48 combinations: each
# kind on each mesh, each mesh and each kind with both sizes and both
# reductions, each size with both reductions, and each kind with a padded
# vocabulary (the padded size on a vocabulary-split mesh).
DISTILL_CASES = covering(
    [
        ("vocab8", "even", KIND_BETAS[0], "mean"),
        ("vocab8", "padded", KIND_BETAS[1], "none"),
        ("vocab8", "padded", KIND_BETAS[2], "mean"),
        ("batch2_vocab4", "padded", KIND_BETAS[0], "none"),
        ("batch2_vocab4", "even", KIND_BETAS[1], "mean"),
        ("batch2_vocab4", "even", KIND_BETAS[2], "none"),
        ("batch8", "padded", KIND_BETAS[0], "mean"),
        ("batch8", "even", KIND_BETAS[1], "none"),
        ("batch8", "even", KIND_BETAS[2], "mean"),
        ("explicit_b2_v2x2", "even", KIND_BETAS[0], "none"),
        ("explicit_b2_v2x2", "padded", KIND_BETAS[1], "mean"),
        ("explicit_b2_v2x2", "padded", KIND_BETAS[2], "none"),
    ],
    MESHES, list(SIZES), KIND_BETAS, ["mean", "none"],
)  # fmt: skip
VOCAB_SPLIT = {"vocab8", "batch2_vocab4", "explicit_b2_v2x2"}
assert {c[2] for c in DISTILL_CASES if c[1] == "padded" and c[0] in VOCAB_SPLIT} == (
    set(KIND_BETAS)
)


@pytest.mark.parametrize(
    "mesh_name, size, kind_beta, reduction",
    DISTILL_CASES,
    ids=["-".join([m, s, k[0], r]) for m, s, k, r in DISTILL_CASES],
)
def test_distillation_on_mesh_equals_single_device(
    mesh_name, size, kind_beta, reduction
):
    kind, beta = kind_beta
    got = distill_run(size, kind, beta, reduction, **axes(mesh_name))
    want = distill_run(size, kind, beta, reduction)
    assert_tree_allclose(got, want, **TOL)
    value, (_, _, _, d_ht, d_wt) = got
    assert np.isfinite(value)
    assert not np.any(np.asarray(d_ht)) and not np.any(np.asarray(d_wt))  # teacher


def _nothing_present_vg(hs, ws, ht, wt, **kw):
    def f(hs, ws):
        return jaxce.linear_distillation_loss(
            hs, ws, ht, wt, kind="jsd", where=jnp.zeros(hs.shape[0], bool), **kw
        )

    return jax.value_and_grad(f, (0, 1))(hs, ws)


def test_distillation_nothing_present_on_mesh():
    hs, ws, _, ht, wt, _, _, _ = inputs("padded")
    value, grads = jit_call(
        _nothing_present_vg, hs, ws, ht, wt, **axes("batch2_vocab4")
    )
    assert value == 0.0
    assert all(not np.any(np.asarray(g)) for g in grads)


def test_distillation_gradients_split_like_inputs():
    mesh, ba, va = meshes()["explicit_data2_vocab4"]
    hs, ws, bs, ht, wt, _, where, adv = inputs("even")
    put = lambda x, *s: jax.device_put(x, NamedSharding(mesh, P(*s)))  # noqa: E731
    args = (put(hs, ba, None), put(ws, va, None), put(bs, va))
    args += (put(ht, ba, None), put(wt, va, None))
    weights = jnp.abs(adv) + 0.1
    f = functools.partial(
        distill_objective, kind="jsd", beta=0.3, reduction="mean", mesh=mesh,
        batch_axis=ba, vocab_axis=va,
    )  # fmt: skip
    vg = jax.jit(jax.value_and_grad(f, (0, 1, 2)))
    value, grads = vg(*args, put(where, ba), put(weights, ba))
    assert [g.sharding.spec for g in grads] == [P(ba, None), P(va, None), P(va)]
    want = distill_run("even", "jsd", 0.3, "mean")
    assert_tree_allclose((value, grads), (want[0], want[1][:3]), **TOL)


def test_distillation_mesh_errors():
    hs, ws, _, ht, wt, _, _, _ = inputs("even")
    with pytest.raises(ValueError, match="need a `mesh`"):
        jaxce.linear_distillation_loss(hs, ws, ht, wt, batch_axis="b")
    mesh = meshes()["batch2_vocab4"][0]
    with pytest.raises(ValueError, match="share the mesh axes"):
        jaxce.linear_distillation_loss(
            hs, ws, ht, wt, mesh=mesh, batch_axis="v", vocab_axis="v"
        )


@pytest.mark.parametrize("mesh_name", ["vocab8", "batch2_vocab4"])
def test_distillation_hlo_gathers_no_weight(mesh_name):
    def fn(hs, ws, ht, wt):
        return jaxce.linear_distillation_loss(
            hs, ws, ht, wt, kind="jsd", **axes(mesh_name)
        )

    ops = _hlo_collectives(fn, BIG_N, BIG_V, d_t=D + 4)
    assert ops
    assert not [c for op, c in ops if op == "all-gather" and c >= BIG_V * D // 8]
    assert max(c for _, c in ops) < BIG_V * D


@pytest.mark.parametrize("mesh_name", ["vocab8", "batch2_vocab4"])
def test_byte_budget_on_mesh_equals_single_device(mesh_name):
    """A 1-byte budget (1-token distillation chunks) on a mesh: same results."""
    kw = dict(memory_budget_bytes=1, **axes(mesh_name))
    want = stats_run("padded", "vd")
    assert_tree_allclose(stats_run("padded", "vd", **kw), want, **TOL)
    want = distill_run("padded", "jsd", 0.3, "mean")
    assert_tree_allclose(distill_run("padded", "jsd", 0.3, "mean", **kw), want, **TOL)
