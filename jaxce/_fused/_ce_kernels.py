"""Cross-entropy on the engine: its streamed statistic and its row loss.

Both form, per token, the shifted statistics `CEStats` (``m`` the row max, a
shift that the loss is invariant to; ``log_s = log sum_c exp(z_c - m)``; the
target logit; ``sw = sum_c w_c (z_c - m)``; the target's class weight), and
`token_losses` composes the loss from them without cancellation:

    L = (1 - eps) w_y ((m - z_y) + log_s) + eps / V (W log_s - sw)
        + lam (m + log_s)**2,        W = sum_c w_c

so a tie of two logits of 1e7 gives ``log 2``, not ``lse - z_y = 0`` or 1.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from .._core import nan_where
from ._engine import Block, RowLoss, Statistic, Vocab


class CEStats(NamedTuple):
    """Per-token statistics of cross-entropy (see the module docstring)."""

    m: Array
    log_s: Array
    z_y: Array
    sw: Array
    w_y: Array


class CEParams(NamedTuple):
    """The differentiable options (None: statically absent)."""

    class_weights: Array | None
    eps: Array | None  # label smoothing
    lam: Array | None  # z-loss weight


def token_losses(
    s: CEStats, p: CEParams, num_classes: int, invalid: Array | None = None
) -> Array:
    """Per-token losses from the statistics (``invalid`` tokens NaN)."""
    dtype = s.log_s.dtype
    nll = (s.m - s.z_y) + s.log_s
    cw = p.class_weights
    if cw is not None:
        nll = s.w_y * nll
    if p.eps is not None:
        k = jnp.asarray(num_classes, dtype)
        total = k if cw is None else jnp.sum(cw).astype(dtype)
        nll = (1 - p.eps) * nll + p.eps / k * (total * s.log_s - s.sw)
    if p.lam is not None:
        nll = nll + p.lam * jnp.square(s.m + s.log_s)
    return nan_where(invalid, nll)


def _shift(sw: Array, wsum: Array, m: Array, m_new: Array) -> Array:
    """``sw = sum_c w_c (z_c - m)`` moved to the max ``m_new``."""
    ok = jnp.isfinite(m) & jnp.isfinite(m_new)
    return sw + jnp.where(ok, wsum * (m - m_new), jnp.zeros((), sw.dtype))


@dataclasses.dataclass(frozen=True)
class CEStat(Statistic):
    """`CEStats` streamed over vocabulary blocks; ``blk.classes`` is the class
    weights' block when ``weighted``. The accumulators are `CEStats` with ``s``
    in place of ``log_s``, plus ``wsum`` (the class weight seen so far)."""

    smoothing: bool
    weighted: bool

    def init(self, n: int, cdt):
        z = jnp.zeros((n,), cdt)
        return (jnp.full((n,), -jnp.inf, cdt), z, z, z, z, z)

    def update(self, acc, z: Array, blk: Block):
        m, s, zy, sw, wsum, wy = acc
        zero = jnp.zeros((), z.dtype)
        zm = jnp.where(blk.valid[None, :], z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(zm, axis=-1))
        m0 = jnp.where(jnp.isfinite(m_new), m_new, zero)
        s = s * jnp.exp(m - m0) + jnp.sum(jnp.exp(zm - m0[:, None]), axis=-1)
        zy = zy + blk.at_label(z, zero)
        w = blk.classes[0].astype(z.dtype) if self.weighted else None
        if self.smoothing:
            wc = jnp.where(blk.valid, 1 if w is None else w, zero)
            zw = jnp.where(blk.valid[None, :], (z - m0[:, None]) * wc[None, :], zero)
            sw = _shift(sw, wsum, m, m_new) + jnp.sum(zw, axis=-1)
            wsum = wsum + jnp.sum(wc)
        if w is not None:
            wy = wy + blk.class_at_label(w, zero)
        return m_new, s, zy, sw, wsum, wy

    def combine(self, acc, vocab: Vocab):
        if not vocab.sharded:
            return acc
        m, s, zy, sw, wsum, wy = acc
        big, big0 = vocab.max(m)
        sw = vocab.psum(_shift(sw, wsum, m, big))
        s = vocab.psum(s * jnp.exp(m - big0))
        return big, s, vocab.psum(zy), sw, vocab.psum(wsum), vocab.psum(wy)

    def finish(self, acc):
        m, s, zy, sw, _, wy = acc
        m0 = jnp.where(jnp.isfinite(m), m, 0)
        log_s = jnp.log(s)
        return CEStats(m0, log_s, zy, sw, wy), (m0, log_s)

    def cotangent(self, z: Array, blk: Block, saved, cts):
        m0, log_s = saved
        zero = jnp.zeros((), z.dtype)
        # m is a shift the loss is invariant to: its cotangent drops out.
        _, g_ls, g_zy, g_sw, g_wy = cts
        p = jnp.exp((z - m0[:, None]) - log_s[:, None])
        dz = g_ls[:, None] * p + jnp.where(blk.is_label(), g_zy[:, None], zero)
        w = blk.classes[0].astype(z.dtype) if self.weighted else None
        if self.smoothing:
            dz = dz + g_sw[:, None] * (1 if w is None else w[None, :])
        if w is None:
            return dz, ()
        dw = jnp.sum(jnp.where(blk.is_label(), g_wy[:, None], zero), axis=0)
        if self.smoothing:
            zc = jnp.where(blk.valid[None, :], g_sw[:, None] * (z - m0[:, None]), zero)
            dw = dw + jnp.sum(zc, axis=0)
        return dz, (dw,)


def _row_stats(z: Array, blk: Block, p: CEParams) -> tuple[CEStats, Array]:
    """`CEStats` of full rows, and the softmax."""
    zero = jnp.zeros((), z.dtype)
    m = jnp.max(z, axis=-1)
    m0 = jnp.where(jnp.isfinite(m), m, zero)
    e = jnp.exp(z - m0[:, None])
    log_s = jnp.log(jnp.sum(e, axis=-1))
    z_y = jnp.take_along_axis(z, blk.labels[:, None], axis=1)[:, 0]
    cw = p.class_weights
    w_y = zero * z_y if cw is None else cw[blk.labels].astype(z.dtype)
    sw = jnp.zeros_like(z_y)
    if p.eps is not None:
        d = z - m0[:, None]
        sw = jnp.sum(d if cw is None else d * cw.astype(z.dtype)[None, :], axis=-1)
    return CEStats(m0, log_s, z_y, sw, w_y), e / jnp.exp(log_s)[:, None]


@dataclasses.dataclass(frozen=True)
class CERows(RowLoss):
    """Cross-entropy of full rows (one device), with its closed-form ``dz``:

    dz = c_n ((g0_n + 2 lam lse_n) p - a_n [c = y_n] - eps / V w_c),
    a_n = (1 - eps) w_y,  g0_n = a_n + eps / V sum_c w_c
    """

    num_classes: int

    def value(self, z, aux, blk, params, vocab):
        return token_losses(_row_stats(z, blk, params)[0], params, self.num_classes)

    def value_and_grad(self, z, aux, blk, params, vocab, coef, want_params):
        s, prob = _row_stats(z, blk, params)
        cw, eps, lam = params
        dtype, v = z.dtype, self.num_classes
        k = jnp.asarray(v, dtype)
        loss = token_losses(s, params, v)
        nll = (s.m - s.z_y) + s.log_s
        a = jnp.ones_like(nll) if cw is None else s.w_y
        total = k if cw is None else jnp.sum(cw).astype(dtype)
        g = a
        if eps is not None:
            a = (1 - eps) * a
            g = a + eps / k * total
        if lam is not None:
            g = g + 2 * lam * (s.m + s.log_s)
        onehot = jnp.arange(z.shape[1])[None, :] == blk.labels[:, None]
        dz = g[:, None] * prob - jnp.where(onehot, a[:, None], 0)
        if eps is not None:
            dz = dz - eps / k * (1 if cw is None else cw.astype(dtype)[None, :])
        dz = coef[:, None] * dz
        if not want_params:
            return loss, dz, None
        d_cw = d_eps = d_lam = None
        if cw is not None:
            t = (1 if eps is None else 1 - eps) * coef * nll
            d_cw = jnp.zeros(cw.shape, dtype).at[blk.labels].add(t)
            if eps is not None:
                shifted = s.log_s[:, None] - (z - s.m[:, None])
                d_cw = d_cw + eps / k * jnp.sum(coef[:, None] * shifted, axis=0)
            d_cw = d_cw.astype(cw.dtype)
        if eps is not None:
            w_nll = nll if cw is None else s.w_y * nll
            d_eps = jnp.sum(coef * (-w_nll + (total * s.log_s - s.sw) / k))
        if lam is not None:
            d_lam = jnp.sum(coef * jnp.square(s.m + s.log_s))
        return loss, dz, CEParams(d_cw, d_eps, d_lam)
