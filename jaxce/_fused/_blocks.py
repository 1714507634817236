"""Block sizes and chunked kernels of the fused linear -> cross-entropy.

The logits ``z = softcap(hidden @ weight.T + bias)`` are only ever formed one
block at a time, in float32 (float64 for float64 input). Every block size comes
from one element budget (`._block_sizes`).

The two kernels here (`chunk_stats`, `chunk_grads`) walk *vocabulary* blocks of
``token_chunk x chunk_size`` logits and work on a vocabulary *slice*: the whole
vocabulary for the single-device loss, one shard of it under ``shard_map``.
Ragged sizes need no padding copy: the last vocabulary chunk starts at
``V - chunk_size`` (it overlaps the previous one) and its columns that the
previous chunk already covered are masked out; the same for the last token block.
A shard whose vocabulary was padded to split evenly over the devices passes
``limit`` (its real classes): the columns after it are masked the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .._core import compute_dtype
from ._block_sizes import Blocks as Blocks
from ._weight_layout import (
    WEIGHT_LAYOUTS as WEIGHT_LAYOUTS,
    class_axis as class_axis,
    hidden_grad as hidden_grad,
    weight_grad as weight_grad,
    weight_slice as weight_slice,
)

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Static:
    """Hashable static configuration of one call (a custom_vjp nondiff arg)."""

    softcap: float | None
    blocks: Blocks
    need_sum: bool  # label smoothing: sum_c w_c z_c is needed
    reduction: str
    weight_layout: str = "vd"  # "vd": weight (V, D); "dv": weight (D, V)

    @property
    def class_axis(self) -> int:
        """The axis of ``weight`` that indexes classes."""
        return class_axis(self.weight_layout)


class Operands(NamedTuple):
    """What the logits and their statistics are computed from.

    ``labels`` are local to the vocabulary slice (global label minus the slice's
    first class); labels outside ``[0, V)`` add nothing. ``class_weights``
    (``(V,)`` or None) only enter ``sum_wz`` (label smoothing). ``num_present``
    (a traced int scalar, or None: all) is the number of tokens at the front that
    may be present (``compact=True`` packs them there): token blocks starting
    at or after it are skipped (see `token_blocks`).
    """

    hidden: Array  # (N, D)
    weight: Array  # (V, D) ("vd", rows = classes) or (D, V) ("dv")
    bias: Array | None  # (V,)
    labels: Array  # (N,) int
    class_weights: Array | None  # (V,)
    num_present: Array | None = None  # () int: the rows after it are absent


class Stats(NamedTuple):
    """Per-token statistics ``(lse, z_y, sum_wz)`` (or their cotangents).

    ``lse = logsumexp_c z``, ``z_y`` the target logit and ``sum_wz = sum_c w_c
    z_c`` (zeros unless label smoothing needs it).
    """

    lse: Array
    z_y: Array
    sum_wz: Array


class Online(NamedTuple):
    """Online softmax statistics of a slice: ``m = max_c z``, ``s = sum e^(z-m)``."""

    m: Array
    s: Array
    z_y: Array
    sum_wz: Array

    def lse(self) -> Array:
        return lse_from_stats(self.m, self.s)


class Grads(NamedTuple):
    """``(d_hidden, d_weight, d_bias, d_class_weights)`` of a kernel."""

    d_hidden: Array
    d_weight: Array
    d_bias: Array | None
    d_class_weights: Array | None


def lse_from_stats(m: Array, s: Array) -> Array:
    """``logsumexp`` from the running max ``m`` and ``s = sum exp(z - m)``."""
    return jnp.where(jnp.isfinite(m), m, 0) + jnp.log(s)


def logits_block(
    h: Array, w: Array, b: Array | None, softcap, cdt, weight_layout: str = "vd"
) -> Array:
    """``softcap(h @ w.T + b)`` (``"dv"``: ``h @ w``) in the compute dtype: (T, C).

    One ``dot_general`` contracting the feature axis of ``w`` in place: no
    transpose of the weight.
    """
    k = 1 - class_axis(weight_layout)  # the feature axis of w
    z = lax.dot_general(h, w, (((1,), (k,)), ((), ())), preferred_element_type=cdt)
    if b is not None:
        z = z + b.astype(cdt)[None, :]
    if softcap is not None:
        c = jnp.asarray(softcap, cdt)
        z = c * jnp.tanh(z / c)
    return z


def chunk_start(j, size: int, total: int):
    """Start of chunk ``j`` and the first index it owns (overlap for the last)."""
    lo = j * size
    return jnp.minimum(lo, total - size), lo


def token_blocks(
    n: int, t: int, fn: Callable[[C, Any, Any], C], carry: C, count=None
) -> C:
    """Run ``fn(carry, start, lo)`` over token blocks (directly when one block).

    With a ``count`` (a traced int scalar) only the ``ceil(count / t)`` blocks
    that hold one of the first ``count`` tokens run (a ``fori_loop`` with a
    traced bound, run inside the losses' ``custom_vjp`` rules); the rows of the
    others keep their value in ``carry``.
    """
    if t >= n:
        return fn(carry, 0, 0)

    def step(i, c: C) -> C:
        start, lo = chunk_start(i, t, n)
        return fn(c, start, lo)

    if count is not None:
        return lax.fori_loop(0, (count + t - 1) // t, step, carry)
    return lax.scan(lambda c, i: (step(i, c), None), carry, jnp.arange(-(-n // t)))[0]


def owned_columns(cols: Array, lo, limit) -> Array:
    """Columns a block owns (``>= lo``: not done by the chunk before) that are
    real classes (before ``limit``; None: no limit)."""
    owned = cols >= lo
    return owned if limit is None else owned & (cols < limit)


def chunk_stats(ops: Operands, st: Static, limit=None) -> Online:
    """Per-token online softmax statistics of the logits against a slice.

    ``limit`` (a scalar, may be traced; None: all classes) is the number of real
    classes at the start of the slice: the rows of ``weight`` after it are
    padding, whose logits count as ``-inf`` (out of ``m``, ``s`` and
    ``sum_wz``). Labels never point at them.

    Returns `Online` ``(m, s, z_y, sum_wz)``, each ``(N,)`` in the compute
    dtype (``sum_wz`` zeros unless ``st.need_sum``). Shards combine with
    ``M = pmax(m)``, ``S = psum(s * exp(m - M))`` and ``psum`` of ``z_y`` and
    ``sum_wz``.
    """
    hidden, weight, bias, labels = ops[:4]
    class_weights = ops.class_weights if st.need_sum else None
    lay = st.weight_layout
    n, v = hidden.shape[0], weight.shape[st.class_axis]
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    c, t = st.blocks.chunk_size, st.blocks.token_chunk
    neg_inf = jnp.asarray(-jnp.inf, cdt)
    zero = jnp.zeros((), cdt)

    def block(outs, t_start, t_lo):
        h = lax.dynamic_slice_in_dim(hidden, t_start, t, 0)
        lab = lax.dynamic_slice_in_dim(labels, t_start, t, 0)

        def vocab_step(acc, j):
            m, s, zy, sw = acc
            start, lo = chunk_start(j, c, v)
            w = weight_slice(weight, start, c, lay)
            b = None if bias is None else lax.dynamic_slice_in_dim(bias, start, c)
            z = logits_block(h, w, b, st.softcap, cdt, lay)
            cols = start + jnp.arange(c)
            valid = owned_columns(cols, lo, limit)
            zm = jnp.where(valid[None, :], z, neg_inf)
            m_new = jnp.maximum(m, jnp.max(zm, axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, zero)
            s = s * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(zm - m_safe[:, None]), -1)
            hit = (lab >= lo) & (lab < start + c)
            idx = jnp.clip(lab - start, 0, c - 1)[:, None]
            zy = zy + jnp.where(hit, jnp.take_along_axis(z, idx, axis=1)[:, 0], zero)
            if st.need_sum:
                wz = z
                if class_weights is not None:
                    cw = lax.dynamic_slice_in_dim(class_weights, start, c)
                    wz = z * cw.astype(cdt)[None, :]
                sw = sw + jnp.sum(jnp.where(valid[None, :], wz, zero), axis=-1)
            return (m_new, s, zy, sw), None

        init = (jnp.full((t,), neg_inf),) + tuple(jnp.zeros((t,), cdt) for _ in "szw")
        stats, _ = lax.scan(vocab_step, init, jnp.arange(-(-v // c)))
        return tuple(
            lax.dynamic_update_slice_in_dim(o, x, t_start, 0)
            for o, x in zip(outs, stats)
        )

    # Rows of skipped blocks (absent, see `token_blocks`) keep m = 0, s = 1:
    # lse = 0, finite.
    zeros, ones = jnp.zeros((n,), cdt), jnp.ones((n,), cdt)
    init = (zeros, ones, zeros, zeros)
    out = token_blocks(n, t, block, init, ops.num_present)
    return Online(*cast(tuple[Array, ...], out))


def chunk_grads(
    ops: Operands,
    lse: Array,
    cts: Stats,
    st: Static,
    *,
    weight_grad_dtype=None,
    limit=None,
) -> Grads:
    """Gradients through the logits, given per-token cotangents ``cts``.

    (Shapes below for ``weight_layout="vd"``; with ``"dv"`` ``weight`` and
    ``d_weight`` are ``(D, V)``.)

    Recomputes each logits block and forms

        dz[n, c] = g_lse[n] * exp(z[n, c] - lse[n]) + g_zy[n] * [c == labels[n]]
                   + g_sum[n] * w_c

    (times ``1 - (z / softcap)**2`` with a soft cap): the cotangent of ``z`` when
    the `Stats` ``lse``, ``z_y``, ``sum_wz`` have cotangents ``cts``
    (``cts.sum_wz`` is ignored unless ``st.need_sum``). ``lse`` is the *full*
    (all-shard) logsumexp; ``weight_grad_dtype`` defaults to ``weight.dtype``.
    Columns at or after ``limit`` (padding, see `chunk_stats`) get ``dz = 0``.

    Returns `Grads`: ``d_hidden (N, D)`` in the compute dtype (partial over the
    slice: sum it over vocabulary shards), ``d_weight (V, D)``, ``d_bias (V,)``
    in the compute dtype (None without bias), ``d_class_weights (V,)`` (None
    unless ``st.need_sum`` and class weights are given).
    """
    hidden, weight, bias, labels = ops[:4]
    class_weights = ops.class_weights if st.need_sum else None
    n, d = hidden.shape
    lay, ax = st.weight_layout, st.class_axis
    v = weight.shape[ax]
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    in_dt = jnp.result_type(hidden, weight)
    wdt = weight.dtype if weight_grad_dtype is None else weight_grad_dtype
    c, t = st.blocks.chunk_size, st.blocks.token_chunk
    zero = jnp.zeros((), cdt)
    g_lse, g_zy = cts.lse.astype(cdt), cts.z_y.astype(cdt)
    g_sum = cts.sum_wz.astype(cdt) if st.need_sum else None

    def vocab_step(carry, j):
        dh, dw, db, dcw = carry
        start, lo = chunk_start(j, c, v)
        w = weight_slice(weight, start, c, lay)
        b = None if bias is None else lax.dynamic_slice_in_dim(bias, start, c)
        cw = None
        if class_weights is not None:
            cw = lax.dynamic_slice_in_dim(class_weights, start, c).astype(cdt)
        cols = start + jnp.arange(c)
        valid = owned_columns(cols, lo, limit)

        def block(acc, t_start, t_lo):
            dh, dwj, dbj, dcwj = acc
            sl = lambda x: lax.dynamic_slice_in_dim(x, t_start, t, 0)  # noqa: E731
            h, lab = sl(hidden), sl(labels)
            z = logits_block(h, w, b, st.softcap, cdt, lay)
            dz = sl(g_lse)[:, None] * jnp.exp(z - sl(lse)[:, None])
            dz = dz + jnp.where(cols[None, :] == lab[:, None], sl(g_zy)[:, None], zero)
            if g_sum is not None:
                gs = sl(g_sum)[:, None]
                dz = dz + (gs if cw is None else gs * cw[None, :])
            if st.softcap is not None:
                dz = dz * (1 - jnp.square(z / jnp.asarray(st.softcap, cdt)))
            rows = (t_start + jnp.arange(t)) >= t_lo
            mask = rows[:, None] & valid[None, :]
            dz = jnp.where(mask, dz, zero)
            dzc = dz.astype(in_dt)
            dh_blk = hidden_grad(dzc, w, lay, cdt)
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + dh_blk, t_start, 0)
            dwj = dwj + weight_grad(dzc, h, lay, cdt)
            if dbj is not None:
                dbj = dbj + jnp.sum(dz, axis=0)
            if dcwj is not None and g_sum is not None:
                gz = jnp.where(mask, sl(g_sum)[:, None] * z, zero)
                dcwj = dcwj + jnp.sum(gz, axis=0)
            return dh, dwj, dbj, dcwj

        acc = (
            dh,
            jnp.zeros((c, d) if ax == 0 else (d, c), cdt),
            None if db is None else jnp.zeros((c,), cdt),
            None if dcw is None else jnp.zeros((c,), cdt),
        )
        dh, dwj, dbj, dcwj = token_blocks(n, t, block, acc, ops.num_present)

        def put(full, part, axis=0):
            old = lax.dynamic_slice_in_dim(full, start, c, axis)
            new = old + part.astype(full.dtype)
            return lax.dynamic_update_slice_in_dim(full, new, start, axis)

        dw = put(dw, dwj, ax)
        db = None if db is None else put(db, dbj)
        dcw = None if dcw is None else put(dcw, dcwj)
        return (dh, dw, db, dcw), None

    init = (
        jnp.zeros((n, d), cdt),
        jnp.zeros(weight.shape, wdt),
        None if bias is None else jnp.zeros((v,), cdt),
        None if class_weights is None else jnp.zeros((v,), cdt),
    )
    out, _ = lax.scan(vocab_step, init, jnp.arange(-(-v // c)))
    return Grads(*out)
