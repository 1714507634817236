"""Token-chunked fused loss: gradients computed in the forward (Liger-style).

For the scalar reductions (``"mean"``, ``"sum"``, ``"sum_over_batch_size"``) the
whole loss -- statistics, options and reduction -- is one ``jax.custom_vjp``
(`scalar_loss`):

- its **primal** (a call that is not differentiated) is the statistics pass of
  `fused_stats` (vocabulary blocks, one matmul, no gradient work);
- its **forward rule** (only run under differentiation) walks *token* chunks
  (`token_chunk_grads`). For ``T`` tokens it forms the full-vocabulary logits
  block ``(T, V)`` (one matmul), the per-token ``logsumexp``, the loss
  statistics and the analytic ``dz`` (the closed form of
  `jaxce.closed_form.linear_softmax_cross_entropy`), then ``dH[chunk] = dz @ W``
  and ``dW += dz.T @ H[chunk]`` (the latter in ``chunk_size``-class slices, so
  no ``(V, D)`` temporary): **three** matmuls in all, against four for
  recompute-in-backward;
- its **backward rule** multiplies the saved gradients by the scalar cotangent.

The reduction's per-token coefficients (``1 / sum_n w_y`` for ``"mean"``) depend
only on labels, masks and class weights, so they are known before the loop
(`Coefs`). The gradients of ``class_weights``, ``label_smoothing`` and
``z_loss`` are sums over tokens, accumulated alongside; with ``symbolic_zeros``
the forward rule skips every gradient that is not asked for (``weight``'s ``dW``
matmul included).

Memory: the ``(T, V)`` logits block and its ``dz`` (``T`` from `block_sizes`:
the one block budget), the float32 ``dW`` accumulator (the size of the
gradient; an extra copy only for bf16 / fp16 weights) and the ``(N, D)`` hidden
gradient: O(chunk) beyond the gradients themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jaxtyping import Array

from .._core import Reducer, compute_dtype, make_reducer, nan_where, safe_divide
from ._blocks import Operands, Static, Stats, chunk_start, logits_block, token_blocks
from ._prepare import Prepared
from ._recompute import stats, token_losses


class Coefs(NamedTuple):
    """Per-token quantities of the closed form, known before the token loop.

    Build with `coefficients`. ``eps`` / ``lam`` None means no smoothing / no
    z-loss.
    """

    coef: Array  # reduction coefficient dR/dL_n (0 absent, NaN invalid)
    a: Array  # weight of -z_y: (1 - eps) w_y
    g0: Array  # weight of lse without the z-loss term
    ek: Array | None  # eps / V (None without smoothing)
    lam: Array | None  # z-loss weight (None without z-loss)
    total_w: Array  # sum_c w_c (V without class weights)
    w_y: Array | None  # class_weights[labels] (None without class weights)


def coefficients(
    reducer: Reducer,
    ops: Operands,
    eps: Array | None,
    lam: Array | None,
    invalid: Array | None = None,
) -> Coefs:
    """`Coefs` of one call; ``invalid`` tokens get a NaN ``coef``.

    So every gradient an out-of-range label reaches is NaN.
    """
    dtype, labels, cw = reducer.dtype, ops.labels, ops.class_weights
    v = ops.weight.shape[0]
    w_y = None if cw is None else cw[labels].astype(dtype)
    coef = nan_where(invalid, reducer.coefficients(w_y))
    a = jnp.ones(labels.shape, dtype) if w_y is None else w_y
    total_w = jnp.asarray(v, dtype) if cw is None else jnp.sum(cw)
    g0, ek = a, None  # d loss_n / d lse_n without the z-loss term
    if eps is not None:
        a = (1 - eps) * a
        ek = eps / jnp.asarray(v, dtype)
        g0 = a + ek * total_w
    return Coefs(coef, a, g0, ek, lam, total_w, w_y)


class Want(NamedTuple):
    """Which accumulators `token_chunk_grads` forms."""

    d_hidden: bool = True
    d_weight: bool = True
    d_bias: bool = True
    zc: bool = False  # zc[c] = sum_n coef_n z[n, c] (class-weight gradient)
    sum_wz: bool = False  # the statistic sum_c w_c z_c (label smoothing)


class TokenGrads(NamedTuple):
    stats: Stats
    d_hidden: Array | None
    d_weight: Array | None
    d_bias: Array | None
    zc: Array | None


def token_chunk_grads(ops: Operands, cf: Coefs, st: Static, want: Want) -> TokenGrads:
    """Statistics and gradients of ``sum_n coef_n L_n`` in one pass over tokens.

    With ``z = softcap(hidden @ weight.T + bias)``, ``p = softmax(z)``:

        dz[n, c] = coef_n * ((g0_n + 2 lam lse_n) p[n, c] - a_n [c = y_n]
                              - ek w_c)        (times 1 - (z / cap)**2)

    ``ops`` covers the full vocabulary, its labels in ``[0, V)`` (out-of-range
    ones set to 0, with a NaN ``coef``); chunks of ``st.blocks.token_path_chunk``
    tokens, ``dW`` in slices of ``st.blocks.chunk_size`` classes.

    Returns `TokenGrads` in the compute dtype; ``stats.sum_wz`` zeros unless
    ``want.sum_wz``; unwanted gradients None.
    """
    hidden, weight, bias, labels, class_weights = ops
    n, d = hidden.shape
    v = weight.shape[0]
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    in_dt = jnp.result_type(hidden, weight)
    t, c = st.blocks.token_path_chunk, max(1, min(st.blocks.chunk_size, v))
    zero = jnp.zeros((), cdt)
    cw = None if class_weights is None else class_weights.astype(cdt)
    cols = jnp.arange(v)
    lam, ek = cf.lam, cf.ek

    def chunk(carry, t_start, t_lo):
        acc, dh, dw, db, zc = carry
        sl = lambda x: lax.dynamic_slice_in_dim(x, t_start, t, 0)  # noqa: E731
        h, lab = sl(hidden), sl(labels)
        own = (t_start + jnp.arange(t)) >= t_lo  # rows not done by the last chunk
        k = jnp.where(own, sl(cf.coef), zero)
        z = logits_block(h, weight, bias, st.softcap, cdt)
        m = jnp.max(z, axis=-1)
        m = jnp.where(jnp.isfinite(m), m, zero)
        lse = m + jnp.log(jnp.sum(jnp.exp(z - m[:, None]), axis=-1))
        zy = jnp.take_along_axis(z, lab[:, None], axis=1)[:, 0]
        new = [lse, zy]
        if want.sum_wz:
            new.append(jnp.sum(z if cw is None else z * cw[None, :], axis=-1))
        acc = tuple(
            lax.dynamic_update_slice_in_dim(s, jnp.where(own, x, sl(s)), t_start, 0)
            for s, x in zip(acc, new)
        )
        g = sl(cf.g0) if lam is None else sl(cf.g0) + 2 * lam * lse
        dz = (k * g)[:, None] * jnp.exp(z - lse[:, None])
        dz = dz - jnp.where(
            cols[None, :] == lab[:, None], (k * sl(cf.a))[:, None], zero
        )
        if ek is not None:
            dz = dz - (k * ek)[:, None] * (1 if cw is None else cw[None, :])
        if st.softcap is not None:
            dz = dz * (1 - jnp.square(z / jnp.asarray(st.softcap, cdt)))
        dzc = dz.astype(in_dt)
        if dh is not None:
            blk = lax.dot_general(
                dzc, weight, (((1,), (0,)), ((), ())), preferred_element_type=cdt
            )
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + blk, t_start, 0)
        if dw is not None:
            dw = _add_weight_grad(dw, dzc, h, c, cdt)
        if db is not None:
            db = db + jnp.sum(dz, axis=0)
        if zc is not None:
            zc = zc + jnp.sum(k[:, None] * z, axis=0)
        return acc, dh, dw, db, zc

    init = (
        tuple(jnp.zeros((n,), cdt) for _ in range(3 if want.sum_wz else 2)),
        jnp.zeros((n, d), cdt) if want.d_hidden else None,
        jnp.zeros((v, d), cdt) if want.d_weight else None,
        jnp.zeros((v,), cdt) if want.d_bias and bias is not None else None,
        jnp.zeros((v,), cdt) if want.zc else None,
    )
    acc, dh, dw, db, zc = token_blocks(n, t, chunk, init)
    sw = acc[2] if want.sum_wz else jnp.zeros((n,), cdt)
    return TokenGrads(Stats(acc[0], acc[1], sw), dh, dw, db, zc)


def _add_weight_grad(dw: Array, dz: Array, h: Array, c: int, cdt) -> Array:
    """``dw += dz.T @ h`` in slices of ``c`` classes (no ``(V, D)`` temporary)."""
    v = dw.shape[0]
    dims = (((0,), (0,)), ((), ()))
    if c >= v:
        return dw + lax.dot_general(dz, h, dims, preferred_element_type=cdt)

    def step(dw, j):
        start, lo = chunk_start(j, c, v)
        part = lax.dynamic_slice_in_dim(dz, start, c, 1)
        part = jnp.where((start + jnp.arange(c) >= lo)[None, :], part, 0)
        blk = lax.dot_general(part, h, dims, preferred_element_type=cdt)
        old = lax.dynamic_slice_in_dim(dw, start, c, 0)
        return lax.dynamic_update_slice_in_dim(dw, old + blk, start, 0), None

    return lax.scan(step, dw, jnp.arange(-(-v // c)))[0]


class Params(NamedTuple):
    """The differentiable inputs of `scalar_loss`."""

    hidden: Array
    weight: Array
    bias: Array | None
    class_weights: Array | None  # compute dtype
    eps: Array | None  # label smoothing, compute dtype (None: statically 0)
    lam: Array | None  # z-loss weight, compute dtype (None: statically 0)


class Targets(NamedTuple):
    """The non-differentiable per-token inputs of `scalar_loss`."""

    labels: Array  # absent and out-of-range tokens set to 0
    present: Array  # tokens that count
    invalid: Array  # present tokens with a label outside [0, V): NaN loss


def _is_primal(x) -> bool:
    return isinstance(x, CustomVJPPrimal)


def _unwrap(tree, field: str):
    """``value`` / ``perturbed`` of each `CustomVJPPrimal` leaf (None kept)."""
    return jax.tree.map(lambda x: getattr(x, field), tree, is_leaf=_is_primal)


def _reducer(st: Static, present: Array, dtype) -> Reducer:
    return make_reducer(
        present,
        weights=None,
        reduction=st.reduction,
        base=None,
        dtype=dtype,
        out_dtype=dtype,
    )


def _reduce(st: Static, x: Params, y: Targets, s: Stats) -> Array:
    """The reduced loss in the compute dtype, from the statistics."""
    loss, w_y = token_losses(
        s,
        y.labels,
        x.class_weights,
        num_classes=x.weight.shape[0],
        label_smoothing=0.0 if x.eps is None else x.eps,
        z_loss=0.0 if x.lam is None else x.lam,
        invalid=y.invalid,
    )
    return _reducer(st, y.present, s.lse.dtype).reduce(loss, w_y)


def _operands(x: Params, y: Targets) -> Operands:
    return Operands(x.hidden, x.weight, x.bias, y.labels, x.class_weights)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def scalar_loss(st: Static, x: Params, y: Targets) -> Array:
    """The reduced loss (dtype of ``hidden``); a scalar reduction only.

    Not differentiated, this is the statistics pass of `fused_stats` (one
    matmul, no gradient work).
    """
    return _reduce(st, x, y, stats(st, _operands(x, y))).astype(x.hidden.dtype)


def _scalar_fwd(st: Static, x, y):
    want = cast(Params, _unwrap(x, "perturbed"))
    x, y = cast(Params, _unwrap(x, "value")), cast(Targets, _unwrap(y, "value"))
    ops = _operands(x, y)
    v = x.weight.shape[0]
    cdt = compute_dtype(x.hidden.dtype, x.weight.dtype)
    cf = coefficients(_reducer(st, y.present, cdt), ops, x.eps, x.lam, y.invalid)
    flags = Want(
        d_hidden=bool(want.hidden),
        d_weight=bool(want.weight),
        d_bias=bool(want.bias),
        zc=bool(want.class_weights) and st.need_sum,
        sum_wz=st.need_sum,
    )
    g = token_chunk_grads(ops, cf, st, flags)
    value = _reduce(st, x, y, g.stats)
    lse, zy, sw = g.stats
    k = cf.coef
    dcw = d_eps = d_lam = None
    if want.class_weights and x.class_weights is not None:
        dcw = _class_weight_grad(st, cf, x, y, g, value)
        dcw = dcw.astype(x.class_weights.dtype)
    if want.eps and x.eps is not None:
        nll = lse - zy if cf.w_y is None else cf.w_y * (lse - zy)
        per = -nll + (cf.total_w * lse - sw) / jnp.asarray(v, cdt)
        d_eps = jnp.sum(k * per).astype(x.eps.dtype)
    if want.lam and x.lam is not None:
        d_lam = jnp.sum(k * jnp.square(lse)).astype(x.lam.dtype)
    cast_to = lambda r, ref: None if r is None or ref is None else r.astype(ref.dtype)  # noqa: E731
    # The residuals: the gradients, in the tree structure of `Params`.
    res = Params._make(
        (
            cast_to(g.d_hidden, x.hidden),
            cast_to(g.d_weight, x.weight),
            cast_to(g.d_bias, x.bias),
            dcw,
            d_eps,
            d_lam,
        )
    )
    return value.astype(x.hidden.dtype), res


def _class_weight_grad(
    st: Static, cf: Coefs, x: Params, y: Targets, g: TokenGrads, value: Array
) -> Array:
    """``d R / d w`` from the statistics and ``zc = sum_n coef_n z_n``.

    ``d L_n / d w_c = (1 - eps) (lse_n - z_yn) [c = y_n] + eps / V (lse_n - z_nc)``;
    ``"mean"`` also divides by ``sum_n present_n w_{y_n}`` (quotient rule).
    """
    lse, zy, _ = g.stats
    k, cdt, v = cf.coef, lse.dtype, x.weight.shape[0]
    one_m = jnp.ones((), cdt) if x.eps is None else 1 - x.eps
    dcw = jnp.zeros((v,), cdt).at[y.labels].add(k * one_m * (lse - zy))
    if cf.ek is not None and g.zc is not None:
        dcw = dcw + cf.ek * (jnp.sum(k * lse) - g.zc)
    if st.reduction == "mean" and cf.w_y is not None:
        count = jnp.zeros((v,), cdt).at[y.labels].add(y.present.astype(cdt))
        den = jnp.sum(jnp.where(y.present, cf.w_y, jnp.zeros((), cdt)))
        dcw = dcw - safe_divide(value, den) * count
    return dcw


def _scalar_bwd(st: Static, res: Params, ct):
    if isinstance(ct, SymbolicZero):
        return Params._make((None,) * len(res)), None
    return jax.tree.map(lambda r: ct.astype(r.dtype) * r, res), None


scalar_loss.defvjp(_scalar_fwd, _scalar_bwd, symbolic_zeros=True)


def token_path_loss(p: Prepared) -> Array:
    """`scalar_loss` of a `Prepared` call (scalar reductions only)."""
    x = Params(p.hidden, p.weight, p.bias, p.class_weights, p.eps(), p.lam())
    y = Targets(p.labels, p.present, p.invalid)
    return cast(Callable[..., Array], scalar_loss)(p.static(), x, y)
