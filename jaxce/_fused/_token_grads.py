"""The token-chunk kernel of the gradient-in-forward path (and of the closed form).

`coefficients` gathers the per-token quantities of the closed form (the
reduction's ``c_n`` included), known before the token loop; `token_chunk_grads`
then walks token chunks, each with its full-vocabulary logits block, and forms
the statistics and the gradients of ``sum_n c_n L_n`` in one pass (three
matmuls). Either weight layout (``"vd"`` ``(V, D)``, ``"dv"`` ``(D, V)``) is
contracted in place: no transpose of the weight.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .._core import Reducer, compute_dtype, nan_where
from ._blocks import (
    Operands,
    Static,
    Stats,
    chunk_start,
    class_axis,
    hidden_grad,
    logits_block,
    token_blocks,
    weight_grad,
)


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
    weight_layout: str = "vd",
) -> Coefs:
    """`Coefs` of one call; ``invalid`` tokens get a NaN ``coef``.

    So every gradient an out-of-range label reaches is NaN.
    """
    dtype, labels, cw = reducer.dtype, ops.labels, ops.class_weights
    v = ops.weight.shape[class_axis(weight_layout)]
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
    hidden, weight, bias, labels, class_weights, _ = ops
    n, d = hidden.shape
    lay = st.weight_layout
    v = weight.shape[st.class_axis]
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
        z = logits_block(h, weight, bias, st.softcap, cdt, lay)
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
            blk = hidden_grad(dzc, weight, lay, cdt)
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + blk, t_start, 0)
        if dw is not None:
            dw = add_weight_grad(dw, dzc, h, c, cdt, lay)
        if db is not None:
            db = db + jnp.sum(dz, axis=0)
        if zc is not None:
            zc = zc + jnp.sum(k[:, None] * z, axis=0)
        return acc, dh, dw, db, zc

    init = (
        tuple(jnp.zeros((n,), cdt) for _ in range(3 if want.sum_wz else 2)),
        jnp.zeros((n, d), cdt) if want.d_hidden else None,
        jnp.zeros(weight.shape, cdt) if want.d_weight else None,
        jnp.zeros((v,), cdt) if want.d_bias and bias is not None else None,
        jnp.zeros((v,), cdt) if want.zc else None,
    )
    acc, dh, dw, db, zc = token_blocks(n, t, chunk, init, ops.num_present)
    sw = acc[2] if want.sum_wz else jnp.zeros((n,), cdt)
    return TokenGrads(Stats(acc[0], acc[1], sw), dh, dw, db, zc)


def add_weight_grad(
    dw: Array, dz: Array, h: Array, c: int, cdt, weight_layout: str = "vd"
) -> Array:
    """``dw += dz.T @ h`` (``"dv"``: ``h.T @ dz``) in slices of ``c`` classes.

    No temporary of the size of ``weight``.
    """
    ax = class_axis(weight_layout)
    v = dw.shape[ax]
    if c >= v:
        return dw + weight_grad(dz, h, weight_layout, cdt)

    def step(dw, j):
        start, lo = chunk_start(j, c, v)
        part = lax.dynamic_slice_in_dim(dz, start, c, 1)
        part = jnp.where((start + jnp.arange(c) >= lo)[None, :], part, 0)
        blk = weight_grad(part, h, weight_layout, cdt)
        old = lax.dynamic_slice_in_dim(dw, start, c, ax)
        return lax.dynamic_update_slice_in_dim(dw, old + blk, start, ax), None

    return lax.scan(step, dw, jnp.arange(-(-v // c)))[0]
