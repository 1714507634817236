"""Chunked kernels of the fused linear -> cross-entropy (see ``jaxce._fused``).

The logits ``z = softcap(hidden @ weight.T + bias)`` are only ever formed one
block of ``token_chunk x chunk_size`` at a time, in float32 (float64 for float64
input). Both kernels work on a vocabulary *slice*: the whole vocabulary for the
single-device loss, one shard of it under ``shard_map``.

Ragged sizes need no padding copy: the last vocabulary chunk starts at
``V - chunk_size`` (it overlaps the previous one) and its columns that the
previous chunk already covered are masked out; the same for the last token block.
"""

from __future__ import annotations

from typing import cast

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ._options import compute_dtype

DEFAULT_BLOCK_ELEMENTS = 1 << 22
"""Target size of one logits block (4 Mi elements = 16 MiB in float32)."""
DEFAULT_CHUNK = 2048


def out_of_range(labels: Array, v: int) -> Array:
    """``labels < 0 or labels >= v`` (elementwise; no overflow for narrow ints)."""
    info = jnp.iinfo(labels.dtype)
    low = labels < 0 if info.min < 0 else jnp.zeros(labels.shape, bool)
    return low | (labels >= v) if v <= info.max else low


def nan_where(invalid: Array | None, x: Array) -> Array:
    """``x`` times NaN where ``invalid`` (so gradients through it are NaN too)."""
    if invalid is None:
        return x
    one = jnp.ones((), x.dtype)
    return x * jnp.where(invalid, jnp.asarray(jnp.nan, x.dtype), one)


def default_chunks(n: int, v: int, chunk_size: int | None) -> tuple[int, int]:
    """``(chunk_size, token_chunk)`` used for ``n`` tokens and a vocabulary ``v``.

    ``chunk_size`` (vocabulary) defaults to 2048; the token block is then as large
    as keeps one logits block at ~4 Mi elements (all tokens when they fit).
    Both are clipped to the actual sizes.
    """
    c = DEFAULT_CHUNK if chunk_size is None else chunk_size
    c = max(1, min(c, v))
    t = max(256, DEFAULT_BLOCK_ELEMENTS // c)
    return c, max(1, min(t, n))


def _logits(h: Array, w: Array, b: Array | None, softcap, cdt) -> Array:
    """``softcap(h @ w.T + b)`` in the compute dtype ``cdt``: (T, C)."""
    z = lax.dot_general(h, w, (((1,), (1,)), ((), ())), preferred_element_type=cdt)
    if b is not None:
        z = z + b.astype(cdt)[None, :]
    if softcap is not None:
        c = jnp.asarray(softcap, cdt)
        z = c * jnp.tanh(z / c)
    return z


def _chunk_start(j, size: int, total: int):
    """Start of chunk ``j`` and the first index it owns (overlap for the last)."""
    lo = j * size
    return jnp.minimum(lo, total - size), lo


def _token_blocks(n: int, t: int, fn, carry):
    """Run ``fn(carry, start, lo)`` over token blocks (directly when one block)."""
    if t >= n:
        return fn(carry, 0, 0)

    def body(c, i):
        start, lo = _chunk_start(i, t, n)
        return fn(c, start, lo), None

    return lax.scan(body, carry, jnp.arange(-(-n // t)))[0]


def chunk_stats(
    hidden: Array,
    weight: Array,
    bias: Array | None,
    labels: Array,
    class_weights: Array | None,
    *,
    softcap: float | None,
    chunk_size: int,
    token_chunk: int,
    need_sum: bool,
) -> tuple[Array, Array, Array, Array]:
    """Per-token softmax statistics of the logits against a vocabulary slice.

    Args:
        hidden: ``(N, D)``.
        weight: ``(V, D)`` slice of the classifier (rows = classes).
        bias: ``(V,)`` or None.
        labels: ``(N,)`` int, *local* to the slice (global label minus the
            slice's first class); labels outside ``[0, V)`` add 0 to ``z_y``.
        class_weights: ``(V,)`` weights ``w_c`` for ``sum_wz`` (None: 1).
        softcap: ``c`` for ``c * tanh(z / c)`` or None.
        chunk_size, token_chunk: block sizes (``<= V``, ``<= N``).
        need_sum: compute ``sum_wz`` (label smoothing); zeros otherwise.

    Returns:
        ``(m, s, z_y, sum_wz)``, each ``(N,)`` in the compute dtype:
        ``m = max_c z``, ``s = sum_c exp(z - m)`` (so ``lse = m + log s``),
        ``z_y`` the target logit, ``sum_wz = sum_c w_c z_c``.
    """
    n, v = hidden.shape[0], weight.shape[0]
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    c, t = chunk_size, token_chunk
    neg_inf = jnp.asarray(-jnp.inf, cdt)
    zero = jnp.zeros((), cdt)

    def block(carry, t_start, t_lo):
        outs = carry
        h = lax.dynamic_slice_in_dim(hidden, t_start, t, 0)
        lab = lax.dynamic_slice_in_dim(labels, t_start, t, 0)

        def vocab_step(acc, j):
            m, s, zy, sw = acc
            start, lo = _chunk_start(j, c, v)
            w = lax.dynamic_slice_in_dim(weight, start, c, 0)
            b = None if bias is None else lax.dynamic_slice_in_dim(bias, start, c)
            z = _logits(h, w, b, softcap, cdt)
            valid = (start + jnp.arange(c)) >= lo
            zm = jnp.where(valid[None, :], z, neg_inf)
            m_new = jnp.maximum(m, jnp.max(zm, axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, zero)
            s = s * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(zm - m_safe[:, None]), -1)
            hit = (lab >= lo) & (lab < start + c)
            idx = jnp.clip(lab - start, 0, c - 1)[:, None]
            zy = zy + jnp.where(hit, jnp.take_along_axis(z, idx, axis=1)[:, 0], zero)
            if need_sum:
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

    init = tuple(jnp.zeros((n,), cdt) for _ in range(4))
    return cast(tuple[Array, Array, Array, Array], _token_blocks(n, t, block, init))


def lse_from_stats(m: Array, s: Array) -> Array:
    """``logsumexp`` from the running max ``m`` and ``s = sum exp(z - m)``."""
    return jnp.where(jnp.isfinite(m), m, 0) + jnp.log(s)


def chunk_grads(
    hidden: Array,
    weight: Array,
    bias: Array | None,
    labels: Array,
    class_weights: Array | None,
    lse: Array,
    g_lse: Array,
    g_zy: Array,
    g_sum: Array | None,
    *,
    softcap: float | None,
    chunk_size: int,
    token_chunk: int,
    weight_grad_dtype=None,
) -> tuple[Array, Array, Array | None, Array | None]:
    """Gradients through the logits, given per-token coefficients.

    Recomputes each logits block and forms

        dz[n, c] = g_lse[n] * exp(z[n, c] - lse[n]) + g_zy[n] * [c == labels[n]]
                   + g_sum[n] * w_c

    (times ``1 - (z / softcap)**2`` with a soft cap): the cotangent of ``z`` when
    ``lse``, ``z_y`` and ``sum_wz`` (see `chunk_stats`) have cotangents ``g_lse``,
    ``g_zy`` and ``g_sum``. ``lse`` is the *full* (all-shard) logsumexp.

    Args: as `chunk_stats`, plus ``lse``, ``g_lse``, ``g_zy``, ``g_sum`` (``(N,)``;
        ``g_sum`` None means no ``sum_wz`` term) and ``weight_grad_dtype`` (dtype of
        ``d_weight``; default ``weight.dtype``).

    Returns:
        ``(d_hidden, d_weight, d_bias, d_class_weights)``: ``d_hidden (N, D)`` in
        the compute dtype (partial over the slice: sum it over vocabulary shards),
        ``d_weight (V, D)``, ``d_bias (V,)`` in the compute dtype (None without
        bias), ``d_class_weights (V,)`` (None unless ``g_sum`` and
        ``class_weights`` are given).
    """
    n, d = hidden.shape
    v = weight.shape[0]
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    in_dt = jnp.result_type(hidden, weight)
    wdt = weight.dtype if weight_grad_dtype is None else weight_grad_dtype
    c, t = chunk_size, token_chunk
    zero = jnp.zeros((), cdt)
    want_dcw = g_sum is not None and class_weights is not None
    g_lse, g_zy = g_lse.astype(cdt), g_zy.astype(cdt)
    g_sum = None if g_sum is None else g_sum.astype(cdt)

    def vocab_step(carry, j):
        dh, dw, db, dcw = carry
        start, lo = _chunk_start(j, c, v)
        w = lax.dynamic_slice_in_dim(weight, start, c, 0)
        b = None if bias is None else lax.dynamic_slice_in_dim(bias, start, c)
        cw = None
        if class_weights is not None and g_sum is not None:
            cw = lax.dynamic_slice_in_dim(class_weights, start, c).astype(cdt)
        cols = start + jnp.arange(c)
        valid = cols >= lo

        def block(acc, t_start, t_lo):
            dh, dwj, dbj, dcwj = acc
            sl = lambda x: lax.dynamic_slice_in_dim(x, t_start, t, 0)  # noqa: E731
            h, lab = sl(hidden), sl(labels)
            z = _logits(h, w, b, softcap, cdt)
            dz = sl(g_lse)[:, None] * jnp.exp(z - sl(lse)[:, None])
            dz = dz + jnp.where(cols[None, :] == lab[:, None], sl(g_zy)[:, None], zero)
            if g_sum is not None:
                gs = sl(g_sum)[:, None]
                dz = dz + (gs if cw is None else gs * cw[None, :])
            if softcap is not None:
                dz = dz * (1 - jnp.square(z / jnp.asarray(softcap, cdt)))
            rows = (t_start + jnp.arange(t)) >= t_lo
            mask = rows[:, None] & valid[None, :]
            dz = jnp.where(mask, dz, zero)
            dzc = dz.astype(in_dt)
            dims = (((1,), (0,)), ((), ()))
            dh_blk = lax.dot_general(dzc, w, dims, preferred_element_type=cdt)
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + dh_blk, t_start, 0)
            dims_w = (((0,), (0,)), ((), ()))
            dwj = dwj + lax.dot_general(dzc, h, dims_w, preferred_element_type=cdt)
            if dbj is not None:
                dbj = dbj + jnp.sum(dz, axis=0)
            if dcwj is not None:
                gz = jnp.where(mask, sl(g_sum)[:, None] * z, zero)
                dcwj = dcwj + jnp.sum(gz, axis=0)
            return dh, dwj, dbj, dcwj

        acc = (
            dh,
            jnp.zeros((c, d), cdt),
            None if db is None else jnp.zeros((c,), cdt),
            None if dcw is None else jnp.zeros((c,), cdt),
        )
        dh, dwj, dbj, dcwj = _token_blocks(n, t, block, acc)

        def put(full, part):
            old = lax.dynamic_slice_in_dim(full, start, c, 0)
            new = old + part.astype(full.dtype)
            return lax.dynamic_update_slice_in_dim(full, new, start, 0)

        dw = put(dw, dwj)
        db = None if db is None else put(db, dbj)
        dcw = None if dcw is None else put(dcw, dcwj)
        return (dh, dw, db, dcw), None

    init = (
        jnp.zeros((n, d), cdt),
        jnp.zeros((v, d), wdt),
        None if bias is None else jnp.zeros((v,), cdt),
        jnp.zeros((v,), cdt) if want_dcw else None,
    )
    out, _ = lax.scan(vocab_step, init, jnp.arange(-(-v // c)))
    return out
