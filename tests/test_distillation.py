"""Distillation losses: `distillation_loss` and the fused `linear_distillation_loss`.

The plain loss against a NumPy float64 reference (PyTorch's ``kl_div`` and
Liger Kernel's generalised JSD: `tests/peers/test_distillation_torch.py`); its
analytic gradients
(`divergence_and_grad`, used by the fused loss) against autodiff; edge cases
(``-inf`` and extreme logits, nothing present); the fused loss against the plain
one on explicit logits (values and gradients), its memory, bf16 and errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
import jaxce._fused._engine._plan as fused_blocks
from tests.helpers import REDUCTIONS, assert_finite, assert_tree_allclose

KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2)]
N, DS, DT, V = 37, 12, 20, 150
TOL = dict(rtol=2e-5, atol=2e-6)


def _logits(seed, shape, scale=2.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(
        np.float32
    )


# -- references ---------------------------------------------------------------------


def _log_softmax64(z, tau):
    z = np.asarray(z, np.float64) / tau
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _kl64(lp, lq):
    p = np.exp(lp)
    keep = p > 0
    return (p * (np.where(keep, lp, 0.0) - np.where(keep, lq, 0.0))).sum(-1)


def numpy_divergence(zs, zt, kind, beta=0.5, tau=1.0):
    """Per-row divergence in float64 (classes last)."""
    ls, lt = _log_softmax64(zs, tau), _log_softmax64(zt, tau)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return _kl64(lt, ls)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return _kl64(ls, lt)
    with np.errstate(divide="ignore"):  # log 0 = -inf where both are 0
        lm = np.log(beta * np.exp(lt) + (1 - beta) * np.exp(ls))
    return beta * _kl64(lt, lm) + (1 - beta) * _kl64(ls, lm)


def numpy_reduce(per, reduction, where=None, weights=None):
    present = np.ones(per.shape, bool) if where is None else np.asarray(where)
    w = np.ones(per.shape) if weights is None else np.asarray(weights, np.float64)
    w = np.where(present, w, 0.0)
    terms = w * np.where(present, per, 0.0)
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    den = w.sum() if reduction == "mean" else present.sum()
    return terms.sum() / den if den else 0.0


# -- the plain loss -------------------------------------------------------------------


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_matches_numpy_reference(kind, beta, tau):
    zs, zt = _logits(0, (3, 5, 40)), _logits(1, (3, 5, 40))
    where = np.random.default_rng(2).uniform(size=(3, 5)) > 0.3
    weights = np.random.default_rng(3).uniform(0.5, 1.5, size=(3, 5))
    per = numpy_divergence(zs, zt, kind, beta, tau)
    for reduction in REDUCTIONS:
        for w, m in [(None, None), (weights, where)]:
            got = jaxce.distillation_loss(
                zs, zt, kind=kind, beta=beta, temperature=tau, where=m,
                weights=w, reduction=reduction,
            )  # fmt: skip
            want = numpy_reduce(per, reduction, m, w)
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_jsd_endpoints_are_the_kls():
    zs, zt = _logits(9, (8, 30)), _logits(10, (8, 30))
    loss = lambda **kw: jaxce.distillation_loss(zs, zt, reduction="none", **kw)  # noqa: E731
    assert_tree_allclose(loss(kind="jsd", beta=0.0), loss(kind="forward_kl"))
    assert_tree_allclose(loss(kind="jsd", beta=1.0), loss(kind="reverse_kl"))
    # The normalised mixture tends to them: JSD_b / (b (1 - b)).
    for b, kind in [(1e-7, "forward_kl"), (1 - 1e-7, "reverse_kl")]:
        x64 = numpy_divergence(zs, zt, "jsd", b) / (b * (1 - b))
        np.testing.assert_allclose(x64, loss(kind=kind), rtol=1e-4)


def test_axis_base_and_normalizer():
    zs, zt = _logits(13, (4, 20, 3)), _logits(14, (4, 20, 3))
    ref = jaxce.distillation_loss(
        np.moveaxis(zs, 1, -1), np.moveaxis(zt, 1, -1), kind="jsd", reduction="none"
    )
    got = jaxce.distillation_loss(zs, zt, kind="jsd", axis=1, reduction="none")
    assert got.shape == (4, 3)
    assert_tree_allclose(got, ref, **TOL)
    bits = jaxce.distillation_loss(zs, zt, axis=1, base=2, reduction="sum")
    nats = jaxce.distillation_loss(zs, zt, axis=1, reduction="sum")
    np.testing.assert_allclose(bits, nats / math.log(2), rtol=1e-6)
    norm = jaxce.distillation_loss(zs, zt, axis=1, reduction="sum", normalizer=7.0)
    np.testing.assert_allclose(norm, nats / 7.0, rtol=1e-6)


@pytest.mark.parametrize("kind, beta", KINDS)
def test_neg_inf_and_extreme_logits(kind, beta):
    zs = _logits(15, (4, 10))
    zt = _logits(16, (4, 10))
    zt_inf = zt.copy()
    zt_inf[:, :3] = -np.inf  # teacher rules classes out; the student does not
    zs_inf = zs.copy()
    zs_inf[:, 7:] = -np.inf  # the student rules classes out
    both = (zs_inf.copy(), zt_inf.copy())
    both[0][:, :3] = -np.inf  # classes 0-2 out for both
    cases = {"teacher_inf": (zs, zt_inf), "student_inf": (zs_inf, zt)}
    cases["both_inf"] = (both[0], both[1])
    cases["extreme"] = (zs * 1e4, zt * 1e4)  # probabilities underflow to 0
    infinite = {
        "forward_kl": {"student_inf", "both_inf"},
        "reverse_kl": {"teacher_inf"},
    }.get(kind, set())
    for name, (s, t) in cases.items():
        f = lambda s, t: jaxce.distillation_loss(  # noqa: E731
            s, t, kind=kind, beta=beta, temperature=2.0
        )
        value, grads = jax.value_and_grad(f, argnums=(0, 1))(s, t)
        want = np.mean(numpy_divergence(s, t, kind, beta, 2.0))
        if name in infinite and name != "extreme":
            assert value == np.inf, (name, value)
            continue
        assert_finite((value, grads))
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-6)


def test_both_ruled_out_is_finite_for_every_kind():
    # A class with -inf logits in both models adds nothing, for every kind.
    zs, zt = _logits(17, (4, 10)), _logits(18, (4, 10))
    zs[:, :2] = zt[:, :2] = -np.inf
    for kind in ["forward_kl", "reverse_kl", "jsd"]:
        f = lambda s: jaxce.distillation_loss(s, zt, kind=kind)  # noqa: E731
        value, g = jax.value_and_grad(f)(zs)
        ref = jaxce.distillation_loss(zs[:, 2:], zt[:, 2:], kind=kind)
        np.testing.assert_allclose(value, ref, **TOL)
        assert_finite(g)
        assert not np.any(np.asarray(g)[:, :2])


def test_absent_elements():
    zs, zt = _logits(19, (6, 12)), _logits(20, (6, 12))
    zs[1] = np.nan  # anything in an absent row: still no NaN
    zt[1] = np.inf
    where = np.array([True, False, True, True, False, True])
    for kind in ["forward_kl", "reverse_kl", "jsd"]:
        for reduction in ["none", "mean"]:
            f = lambda s: jnp.sum(  # noqa: E731
                jaxce.distillation_loss(
                    s, zt, kind=kind, where=where, reduction=reduction
                )
            )
            value, g = jax.value_and_grad(f)(zs)
            assert_finite((value, g))
            assert not np.any(np.asarray(g)[~where])
        out = jaxce.distillation_loss(zs, zt, kind=kind, where=where, reduction="none")
        assert not np.any(np.asarray(out)[~where])
        nothing = np.zeros(6, bool)
        for reduction in ["mean", "sum_over_batch_size"]:
            f = lambda s: jaxce.distillation_loss(  # noqa: E731
                s, zt, kind=kind, where=nothing, reduction=reduction
            )
            value, g = jax.value_and_grad(f)(zs)
            assert value == 0.0 and not np.any(np.asarray(g))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(teacher_logits=np.zeros((4, 6))), ValueError, r"\(4, 5\).*\(4, 6\)"),
        (dict(kind="kl"), (ValueError, TypeError), "kind"),
        (dict(beta=1.5), ValueError, "beta"),
        (dict(beta=-0.1), ValueError, "beta"),
        (dict(beta=jnp.asarray(0.5)), TypeError, "beta"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(where=np.ones((3,), bool)), ValueError, "where"),
        (dict(reduction="avg"), (ValueError, TypeError), "reduction"),
    ],
)
def test_plain_errors(kwargs, error, match):
    args = dict(student_logits=np.zeros((4, 5)), teacher_logits=np.zeros((4, 5)))
    args.update(kwargs)
    s, t = args.pop("student_logits"), args.pop("teacher_logits")
    with pytest.raises(error, match=match):
        jaxce.distillation_loss(s, t, **args)


# -- the fused loss -------------------------------------------------------------------


def _fused_data(seed=0, n=N, v=V):
    k = jax.random.split(jax.random.key(seed), 9)
    hs = jax.random.normal(k[0], (n, DS))
    ws = jax.random.normal(k[1], (v, DS)) * 0.5
    bs = jax.random.normal(k[2], (v,))
    ht = jax.random.normal(k[3], (n, DT))
    wt = jax.random.normal(k[4], (v, DT)) * 0.5
    bt = jax.random.normal(k[5], (v,))
    where = jax.random.uniform(k[6], (n,)) > 0.25
    weights = jax.random.uniform(k[7], (n,), minval=0.5, maxval=1.5)
    labels = jax.random.randint(k[8], (n,), 0, v).at[::5].set(-100)
    return (hs, ws, bs, ht, wt, bt), dict(where=where, weights=weights, labels=labels)


def _fused(hs, ws, bs, ht, wt, bt, weights, *, bias, **opts):
    if bias:
        opts.update(student_bias=bs, teacher_bias=bt)
    return jaxce.linear_distillation_loss(hs, ws, ht, wt, weights=weights, **opts)


def _plain(hs, ws, bs, ht, wt, bt, weights, *, bias, labels=None, ignore_index=None,
           chunk_size=None, memory_budget_bytes=None, where=None, **opts):  # fmt: skip
    zs, zt = hs @ ws.T, ht @ wt.T
    if bias:
        zs, zt = zs + bs[None, :], zt + bt[None, :]
    if labels is not None:
        keep = labels != ignore_index
        where = keep if where is None else where & keep
    return jaxce.distillation_loss(zs, zt, where=where, weights=weights, **opts)


def _value_and_grads(fn, args, weights, **opts):
    n = args[0].shape[0]

    def scalar(*a):
        out = fn(*a, **opts)
        if opts.get("reduction") == "none":  # every token's gradient counts
            return jnp.sum(out * jnp.linspace(0.5, 1.5, n))
        return out

    return jax.value_and_grad(scalar, argnums=tuple(range(7)))(*args, weights)


def _check_fused(args, weights, **opts):
    """The fused loss and the plain one on explicit logits (one compilation)."""

    def both(*a):
        return tuple(_value_and_grads(f, a[:6], a[6], **opts) for f in (_fused, _plain))

    got, want = jax.jit(both)(*args, weights)
    assert_tree_allclose(got, want, **TOL)
    value, grads = got
    assert_finite(value)
    for g in grads[3:6]:  # the teacher is a constant
        assert not np.any(np.asarray(g))
    return got


@pytest.mark.parametrize("kind, beta", [k for k in KINDS if k != ("jsd", 0.5)])
def test_fused_matches_plain(kind, beta, monkeypatch):
    # Both paths: a scalar reduction (gradients in the forward) and "none"
    # (recomputed in the backward), over several ragged token chunks and dW
    # slices, with every option; the other reductions are in the tests below.
    monkeypatch.setattr(fused_blocks, "BLOCK_ELEMENTS", V * 8)
    args, opts = _fused_data(seed=1)
    for reduction in ["sum_over_batch_size", "none"]:
        _check_fused(
            args, opts["weights"], kind=kind, beta=beta, reduction=reduction,
            bias=True, temperature=2.0, chunk_size=64, where=opts["where"],
            labels=opts["labels"], ignore_index=-100,
        )  # fmt: skip


def test_fused_defaults_match_plain():
    args, _ = _fused_data(seed=7)
    _check_fused(args, None, bias=False)  # forward KL, tau 1, "mean", one chunk


@pytest.mark.parametrize(
    "budget, chunk_size, reduction, memory",
    [
        (None, 7, "mean", None),
        (V * 10, None, "none", None),  # 5 tokens per chunk (the budget halved)
        (V, 150, "sum", None),  # 1 token per chunk
        (None, "auto", "mean", None),  # V classes per dW slice
        (None, "auto", "none", 16 * V * 10),  # 128 classes, 5 tokens per chunk
        (None, 7, "sum", 1),  # 1 token per chunk
    ],
)
def test_fused_chunk_sizes(budget, chunk_size, reduction, memory, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(fused_blocks, "BLOCK_ELEMENTS", budget)
    args, opts = _fused_data(seed=2)
    _check_fused(
        args, opts["weights"], kind="jsd", beta=0.3, temperature=0.8, bias=True,
        chunk_size=chunk_size, memory_budget_bytes=memory, where=opts["where"],
        reduction=reduction,
    )  # fmt: skip


def test_fused_extreme_and_ruled_out_logits():
    (hs, ws, bs, ht, wt, bt), _ = _fused_data(seed=8)
    bt = bt.at[:10].set(-jnp.inf)  # the teacher rules 10 classes out
    args = (hs * 30, ws, bs, ht * 30, wt, bt)  # logits of +-100s: p underflows
    _, grads = _check_fused(args, None, kind="jsd", beta=0.3, bias=True)
    assert_finite(grads)


def test_fused_normalizer_base_and_frozen_weight():
    args, opts = _fused_data(seed=3)
    _check_fused(args, None, kind="reverse_kl", bias=True, normalizer=11.0,
                 reduction="sum", base=2)  # fmt: skip
    hs, ws, bs, ht, wt, bt = args
    frozen = lambda f: jax.jit(  # noqa: E731
        jax.grad(lambda h: f(h, ws, bs, ht, wt, bt, None, bias=False, kind="jsd"))
    )(hs)
    assert_tree_allclose(frozen(_fused), frozen(_plain), **TOL)


def test_fused_nothing_present():
    (hs, ws, bs, ht, wt, bt), _ = _fused_data(seed=4)
    nothing = jnp.zeros((N,), bool)
    for reduction in ["mean", "sum_over_batch_size", "none"]:
        f = lambda hs, ws, bs, ht, wt, bt: jnp.sum(  # noqa: E731
            jaxce.linear_distillation_loss(
                hs,
                ws,
                ht,
                wt,
                student_bias=bs,
                teacher_bias=bt,
                kind="jsd",
                where=nothing,
                reduction=reduction,
            )  # fmt: skip
        )
        vg = jax.jit(jax.value_and_grad(f, argnums=tuple(range(6))))
        value, grads = vg(hs, ws, bs, ht, wt, bt)
        assert value == 0.0
        for g in grads:
            assert not np.any(np.asarray(g))
    labels = jnp.full((N,), -100)
    value = jaxce.linear_distillation_loss(
        hs, ws, ht, wt, labels=labels, ignore_index=-100
    )
    assert value == 0.0


def _close_within_1e2(got, want):
    """Value and gradients of bf16 input within 1e-2 relative of float32."""
    (v16, g16), (v32, g32) = got, want
    assert v16.dtype == jnp.bfloat16 and g16[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(v16), float(v32), rtol=1e-2)
    for a, b in zip(g16, g32):
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b)


@pytest.mark.parametrize("kind, beta", KINDS)
def test_fused_bf16_close_to_float32(kind, beta):
    """Against float32 on the bf16-rounded inputs and on the original ones."""
    args, opts = _fused_data(seed=6)
    lo = [a.astype(jnp.bfloat16) for a in args]
    hi = [a.astype(jnp.float32) for a in lo]  # the same (rounded) numbers
    f = lambda *a: jaxce.linear_distillation_loss(  # noqa: E731
        a[0], a[1], a[3], a[4], student_bias=a[2], teacher_bias=a[5],
        kind=kind, beta=beta, temperature=2.0, where=opts["where"],
        weights=opts["weights"].astype(a[0].dtype),
    )  # fmt: skip
    vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    got = vg(*lo)
    _close_within_1e2(got, vg(*hi))
    _close_within_1e2(got, vg(*args))


@pytest.mark.parametrize("kind, beta", KINDS)
def test_plain_bf16_close_to_float32(kind, beta):
    zs, zt = _logits(11, (N, V)), _logits(12, (N, V))
    f = lambda zs, zt: jaxce.distillation_loss(  # noqa: E731
        zs, zt, kind=kind, beta=beta, temperature=1.5
    )
    vg = jax.jit(jax.value_and_grad(f))
    got = vg(zs.astype(jnp.bfloat16), zt.astype(jnp.bfloat16))
    (v16, g16), (v32, g32) = got, vg(zs, zt)
    _close_within_1e2((v16, (g16,)), (v32, (g32,)))


def _temp_bytes(fn, n, d, v):
    s = jax.ShapeDtypeStruct
    args = [s((n, d), jnp.float32), s((v, d), jnp.float32)] * 2
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_independent_of_vocabulary():
    """With a budget, the temp memory stays flat as V grows 8x, within the budget."""
    n, d, c = 256, 32, 256
    budget = 16 * n * c  # n * c elements: 2 tokens per chunk at V = 16384
    fused = lambda hs, ws, ht, wt: jaxce.linear_distillation_loss(  # noqa: E731
        hs, ws, ht, wt, kind="jsd", chunk_size=c, memory_budget_bytes=budget
    )
    plain = lambda hs, ws, ht, wt: jaxce.distillation_loss(  # noqa: E731
        hs @ ws.T, ht @ wt.T, kind="jsd"
    )
    f_small, f_big = _temp_bytes(fused, n, d, 2048), _temp_bytes(fused, n, d, 16384)
    p_small, p_big = _temp_bytes(plain, n, d, 2048), _temp_bytes(plain, n, d, 16384)
    assert p_big - p_small >= 2 * n * (16384 - 2048) * 4  # (N, V) logits, twice
    assert f_big - f_small <= 0.02 * (p_big - p_small), (f_small, f_big)
    assert f_big <= budget + 4 * n * d * 4, f_big  # the blocks + (N, D) terms


_H = dict(hs=(N, DS), ws=(V, DS), ht=(N, DT), wt=(V, DT))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(ws=(V, DS + 1)), ValueError, r"student_weight.*features"),
        (dict(wt=(V, DS)), ValueError, r"teacher_weight.*features"),
        (dict(ht=(N + 1, DT)), ValueError, rf"tokens.*{N + 1} != {N}"),
        (dict(wt=(V + 1, DT)), ValueError, rf"vocabulary.*{V + 1} != {V}"),
        (dict(hs=(N,)), (ValueError, TypeError), "student_hidden"),
        (dict(student_bias=jnp.zeros(V + 1)), ValueError, "student_bias"),
        (dict(teacher_bias=jnp.zeros(3)), ValueError, "teacher_bias"),
        (dict(labels=jnp.zeros(N, int)), ValueError, "ignore_index"),
        (dict(ignore_index=-100), ValueError, "labels"),
        (dict(labels=jnp.zeros(N + 1, int), ignore_index=-1), ValueError, "labels"),
        (dict(where=jnp.ones(N + 1, bool)), ValueError, "where"),
        (dict(weights=jnp.ones(N + 1)), ValueError, "weights"),
        (dict(kind="kl"), (ValueError, TypeError), "kind"),
        (dict(beta=2.0), ValueError, "beta"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size="AUTO"), (ValueError, TypeError), "chunk_size"),
        (dict(memory_budget_bytes=0), ValueError, "memory_budget_bytes"),
        (dict(labels=jnp.zeros(N), ignore_index=-1), TypeError, "labels"),
    ],
)
def test_fused_errors(change, error, match):
    change = dict(change)
    arrays = {k: jnp.zeros(change.pop(k, shape)) for k, shape in _H.items()}
    with pytest.raises(error, match=match):
        jaxce.linear_distillation_loss(
            arrays["hs"], arrays["ws"], arrays["ht"], arrays["wt"], **change
        )
    with pytest.raises(TypeError, match="same dtype"):
        jaxce.linear_distillation_loss(
            jnp.zeros((N, DS)), jnp.zeros((V, DS), jnp.bfloat16),
            jnp.zeros((N, DT)), jnp.zeros((V, DT)),
        )  # fmt: skip
