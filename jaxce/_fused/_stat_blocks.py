"""Vocabulary-block kernels of the per-token statistics (`linear_token_stats`).

The logits of one block are ``z = softcap(hidden @ W_block + b)`` (`logits`),
formed in the compute dtype (float32 for bf16 / fp16 input); the statistics are
those of the tempered logits ``u = z / tau``. The weight is ``(V, D)``
(``layout="vd"``, PyTorch ``nn.Linear``) or ``(D, V)`` (``layout="dv"``, a
Flax kernel): a block is a slice of its rows or of its columns, never a
transposed copy of the whole weight.

`stats_pass` streams the vocabulary with online accumulators per token: the
running max ``m`` of ``z`` (and its first index, the argmax), with ``d_c = (z_c
- m) / tau``, ``s = sum_c exp(d_c)``, ``t = sum_c exp(d_c) d_c``, and the
target logit, so that

    lse = m / tau + log s,    H = lse - sum_c p_c u_c = log s - t / s

(no cancellation between two large numbers when the logits are large).
`grads_pass` recomputes each block and forms the cotangent of the logits from
the per-token cotangents (see `grads_pass`). Ragged sizes are handled as in
`._blocks`: the last chunk overlaps the previous one and its already-covered
columns (rows) are masked.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, cast

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .._core import compute_dtype
from ._blocks import chunk_start, logits_block, owned_columns, token_blocks
from ._weight_layout import (
    class_axis,
    hidden_grad,
    num_classes,
    weight_grad,
    weight_slice,
)


@dataclasses.dataclass(frozen=True)
class StatConfig:
    """Hashable static configuration of one call (a custom_vjp nondiff arg)."""

    softcap: float | None
    temperature: float
    layout: str  # "vd": weight (V, D); "dv": weight (D, V)
    chunk_size: int  # classes per vocabulary block
    token_chunk: int  # tokens per vocabulary block


class StatOperands(NamedTuple):
    """What the statistics are computed from (labels safe to index with)."""

    hidden: Array  # (N, D)
    weight: Array  # (V, D) or (D, V)
    bias: Array | None  # (V,)
    labels: Array  # (N,) int in [0, V)
    present: Array  # (N,) bool


class Raw(NamedTuple):
    """Per-token statistics of all tokens, in the compute dtype (argmax int32)."""

    logprob: Array  # u_y - lse
    entropy: Array  # lse - sum_c p_c u_c
    lse: Array
    argmax: Array


class Acc(NamedTuple):
    """Online accumulators of one vocabulary slice (`stats_pass`), per token.

    ``m`` the max of ``z`` (``-inf`` when no class is left), ``s = sum_c
    exp(d_c)``, ``t = sum_c exp(d_c) d_c`` with ``d_c = (z_c - m) / tau``, the
    target logit ``z_y`` (0 when the label is not in the slice) and ``arg``
    the first index of ``m`` in the slice (int32). `finish` turns them into
    `Raw` statistics; slices combine (`._stats_parallel`) as the blocks do.
    """

    m: Array
    s: Array
    t: Array
    z_y: Array
    arg: Array


class Shift(NamedTuple):
    """``lse = m / tau + log_s`` kept apart (``m`` the finite max of ``z``, 0 if
    none): ``log p = (z - m) / tau - log_s`` does not round ``lse`` to the
    precision of a large ``m`` (`jax.nn.log_softmax` subtracts the max first)."""

    m: Array
    log_s: Array


def logits(h: Array, w: Array, b: Array | None, cfg: StatConfig, cdt) -> Array:
    """``z = softcap(h @ w + b)`` of one block, ``(T, C)`` in ``cdt``.

    ``w`` is a block of the weight in ``cfg.layout``. The temperature is applied
    after subtracting the running max (`shifted`), never to ``z`` itself.
    """
    return logits_block(h, w, b, cfg.softcap, cdt, cfg.layout)


def shifted(x: Array, cfg: StatConfig) -> Array:
    """``x / tau`` for a difference of logits ``x`` (``z - max``)."""
    return x if cfg.temperature == 1.0 else x / jnp.asarray(cfg.temperature, x.dtype)


def _slices(ops: StatOperands, cfg: StatConfig, start):
    """The weight and bias blocks of ``cfg.chunk_size`` classes at ``start``."""
    c = cfg.chunk_size
    w = weight_slice(ops.weight, start, c, cfg.layout)
    b = None if ops.bias is None else lax.dynamic_slice_in_dim(ops.bias, start, c)
    return w, b


def stats_pass(ops: StatOperands, cfg: StatConfig, limit=None) -> Acc:
    """The `Acc` accumulators of every token over the slice, block by block.

    ``limit`` (None: all) is the number of real classes of the slice: the
    columns after it (padding) are out of every statistic.

    The running max ``m`` is that of ``z`` (before the temperature), so the
    exponents are ``(z - m) / tau``: the same expression as in `grads_pass`,
    where the block is recomputed (a scalar factor on the logits themselves
    could be folded into the matmul differently there, and at large logits one
    rounding of ``u`` is a visible error in ``p``). The argmax is the first
    index of ``m`` (``jnp.argmax``), carried across blocks with a strict ``>``.
    """
    hidden, _, _, labels, _ = ops
    n = hidden.shape[0]
    v = num_classes(ops.weight, cfg.layout)
    cdt = compute_dtype(hidden.dtype, ops.weight.dtype)
    c, t = cfg.chunk_size, cfg.token_chunk
    zero, neg_inf = jnp.zeros((), cdt), jnp.asarray(-jnp.inf, cdt)

    def block(outs, t_start, t_lo):
        h = lax.dynamic_slice_in_dim(hidden, t_start, t, 0)
        lab = lax.dynamic_slice_in_dim(labels, t_start, t, 0)

        def vocab_step(acc, j):
            # m: max z; s = sum e^d, tt = sum e^d d with d = (z - m) / tau <= 0
            m, s, tt, zy, arg = acc
            start, lo = chunk_start(j, c, v)
            w, b = _slices(ops, cfg, start)
            z = logits(h, w, b, cfg, cdt)
            valid = owned_columns(start + jnp.arange(c), lo, limit)[None, :]
            zm = jnp.where(valid, z, neg_inf)
            b_max, b_arg = jnp.max(zm, axis=-1), jnp.argmax(zm, axis=-1)
            arg = jnp.where(b_max > m, (start + b_arg).astype(jnp.int32), arg)
            m_new = jnp.maximum(m, b_max)
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, zero)
            # s = tt = 0 while m = -inf: drop the (NaN) shift then
            shift = jnp.where(jnp.isfinite(m), shifted(m - m_safe, cfg), zero)
            alpha = jnp.exp(shift)
            d = shifted(zm - m_safe[:, None], cfg)
            e = jnp.exp(d)
            e_d = jnp.where(e > 0, e * d, zero)  # 0 * -inf
            tt = alpha * (tt + shift * s) + jnp.sum(e_d, axis=-1)
            s = alpha * s + jnp.sum(e, axis=-1)
            hit = (lab >= lo) & (lab < start + c)
            idx = jnp.clip(lab - start, 0, c - 1)[:, None]
            zy = zy + jnp.where(hit, jnp.take_along_axis(z, idx, axis=1)[:, 0], zero)
            return (m_new, s, tt, zy, arg), None

        f = lambda: jnp.zeros((t,), cdt)  # noqa: E731
        init = (jnp.full((t,), neg_inf), f(), f(), f(), jnp.zeros((t,), jnp.int32))
        new, _ = lax.scan(vocab_step, init, jnp.arange(-(-v // c)))
        return tuple(
            lax.dynamic_update_slice_in_dim(o, x, t_start, 0) for o, x in zip(outs, new)
        )

    z = jnp.zeros((n,), cdt)
    init = (z, z, z, z, jnp.zeros((n,), jnp.int32))
    return Acc(*cast(tuple[Array, ...], token_blocks(n, t, block, init)))


def finish(acc: Acc, cfg: StatConfig) -> tuple[Raw, Shift]:
    """`Raw` statistics and their `Shift` from the accumulators of all classes:

    lse = m / tau + log s,   logprob = (z_y - m) / tau - log s,
    H = log s - t / s.
    """
    m = jnp.where(jnp.isfinite(acc.m), acc.m, 0)
    log_s = jnp.log(acc.s)
    logprob = shifted(acc.z_y - m, cfg) - log_s
    entropy = log_s - acc.t / acc.s
    return Raw(logprob, entropy, shifted(m, cfg) + log_s, acc.arg), Shift(m, log_s)


class Cotangents(NamedTuple):
    """Per-token cotangents of ``logprob``, ``entropy`` and ``lse`` (compute dtype).

    Zero (and ignored) for absent tokens.
    """

    logprob: Array
    entropy: Array
    lse: Array


def grads_pass(
    ops: StatOperands,
    shift: Shift,
    entropy: Array,
    cts: Cotangents,
    cfg: StatConfig,
    limit=None,
    weight_grad_dtype=None,
) -> tuple[Array, Array, Array | None]:
    """``(d_hidden, d_weight, d_bias)`` given the per-token cotangents ``cts``.

    Recomputes each logits block; with ``log p = (z - m) / tau - log_s``
    (`Shift`), ``log p_c + H = u_c - E`` (``E = sum_c p_c u_c``) and cotangents
    ``a`` (logprob), ``b`` (entropy), ``l`` (lse):

        du[n, c] = a_n ([c = y_n] - p_c) - b_n p_c (log p_c + H_n) + l_n p_c

    then ``dz = du / tau`` (times ``1 - (z / cap)**2`` with a soft cap); rows of
    absent tokens and columns at or after ``limit`` (padding) are 0. ``dz``
    is cast to the input dtype before its two matmuls (as the unfused bf16
    backward does). ``d_hidden`` and ``d_bias`` come back in the compute dtype,
    ``d_weight`` in the weight's layout and in ``weight_grad_dtype`` (default:
    the weight's dtype).
    """
    hidden, weight, bias, labels, present = ops
    n, d = hidden.shape
    v = num_classes(weight, cfg.layout)
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    in_dt = jnp.result_type(hidden, weight)
    c, t = cfg.chunk_size, cfg.token_chunk
    zero = jnp.zeros((), cdt)
    axis = class_axis(cfg.layout)

    def vocab_step(carry, j):
        dh, dw, db = carry
        start, lo = chunk_start(j, c, v)
        w, b = _slices(ops, cfg, start)
        cols = start + jnp.arange(c)
        valid = owned_columns(cols, lo, limit)

        def block(acc, t_start, t_lo):
            dh, dwj, dbj = acc
            sl = lambda x: lax.dynamic_slice_in_dim(x, t_start, t, 0)  # noqa: E731
            h = sl(hidden)
            z = logits(h, w, b, cfg, cdt)
            logp = shifted(z - sl(shift.m)[:, None], cfg) - sl(shift.log_s)[:, None]
            p = jnp.exp(logp)
            a, bb, ll = (sl(x)[:, None] for x in cts)
            ent_term = jnp.where(p > 0, p * (logp + sl(entropy)[:, None]), zero)
            du = (ll - a) * p - bb * ent_term
            du = du + jnp.where(cols[None, :] == sl(labels)[:, None], a, zero)
            if cfg.temperature != 1.0:
                du = du / jnp.asarray(cfg.temperature, cdt)
            if cfg.softcap is not None:
                du = du * (1 - jnp.square(z / jnp.asarray(cfg.softcap, cdt)))
            rows = ((t_start + jnp.arange(t)) >= t_lo) & sl(present)
            dz = jnp.where(rows[:, None] & valid[None, :], du, zero)
            dzc = dz.astype(in_dt)
            dh_blk = hidden_grad(dzc, w, cfg.layout, cdt)  # dz @ W_block
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + dh_blk, t_start, 0)
            dwj = dwj + weight_grad(dzc, h, cfg.layout, cdt)  # in w's layout
            if dbj is not None:
                dbj = dbj + jnp.sum(dz, axis=0)
            return dh, dwj, dbj

        acc = (
            dh,
            jnp.zeros((c, d) if cfg.layout == "vd" else (d, c), cdt),
            None if db is None else jnp.zeros((c,), cdt),
        )
        dh, dwj, dbj = token_blocks(n, t, block, acc)

        def put(full, part, ax):
            old = lax.dynamic_slice_in_dim(full, start, c, ax)
            new = old + part.astype(full.dtype)
            return lax.dynamic_update_slice_in_dim(full, new, start, ax)

        dw = put(dw, dwj, axis)
        db = None if db is None else put(db, dbj, 0)
        return (dh, dw, db), None

    init = (
        jnp.zeros((n, d), cdt),
        jnp.zeros(weight.shape, weight_grad_dtype or weight.dtype),
        None if bias is None else jnp.zeros((v,), cdt),
    )
    (dh, dw, db), _ = lax.scan(vocab_step, init, jnp.arange(-(-v // c)))
    return dh, dw, db
