"""Token-chunked fused loss: gradients computed in the forward (Liger-style).

For the scalar reductions (``"mean"``, ``"sum"``, ``"sum_over_batch_size"``) the
whole loss -- statistics, options and reduction -- is one ``jax.custom_vjp``
(`scalar_loss`):

- its **primal** (a call that is not differentiated) is the statistics path of
  ``jaxce._fused`` (vocabulary blocks, one matmul, no gradient work);
- its **forward rule** (only run under differentiation) walks *token* chunks.
  For ``T`` tokens it forms the full-vocabulary logits block ``(T, V)`` (one
  matmul), the per-token ``logsumexp``, the loss statistics and the analytic
  ``dz`` (the closed form of ``jaxce._closed_form_fused``), then
  ``dH[chunk] = dz @ W`` and ``dW += dz.T @ H[chunk]`` (the latter in
  ``chunk_size``-class slices, so no ``(V, D)`` temporary): **three** matmuls in
  all, against four for recompute-in-backward;
- its **backward rule** multiplies the saved gradients by the scalar cotangent.

The reduction's per-token coefficients (``1 / sum_n w_y`` for ``"mean"``) depend
only on labels, masks and class weights, so they are known before the loop. The
gradients of ``class_weights``, ``label_smoothing`` and ``z_loss`` are sums over
tokens, accumulated alongside; with ``symbolic_zeros`` the forward rule skips
every gradient that is not asked for (``weight``'s ``dW`` matmul included).

Memory: the ``(T, V)`` logits block and its ``dz`` (``T`` from
`token_chunk_for`, ~64 MiB of float32 logits), the float32 ``dW`` accumulator
(the size of the gradient; an extra copy only for bf16 / fp16 weights) and the
``(N, D)`` hidden gradient: O(chunk) beyond the gradients themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jaxtyping import Array

from ._closed_form_reduction import reduction_coefficients
from ._fused_chunks import _chunk_start, _logits, _token_blocks, nan_where
from ._options import compute_dtype, is_static_zero, reduce_loss, safe_divide

TOKEN_BLOCK_ELEMENTS = 1 << 24
"""Target size of one ``(token_chunk, V)`` logits block (16 Mi = 64 MiB float32)."""


def token_chunk_for(n: int, v: int, budget: int | None = None) -> int:
    """Tokens per chunk of the token path for ``n`` tokens and vocabulary ``v``.

    At most ``budget // v`` tokens (default `TOKEN_BLOCK_ELEMENTS`, so one
    float32 logits block is ~64 MiB), at least 1; the chunks are then evened out
    (``ceil(n / chunks)``) and rounded up to a multiple of 8 where that fits.
    """
    budget = TOKEN_BLOCK_ELEMENTS if budget is None else budget
    t_max = max(1, min(n, budget // max(v, 1)))
    chunks = -(-n // t_max)
    t = -(-n // chunks)
    t8 = -(-t // 8) * 8
    return t8 if t8 <= min(t_max, n) else t


@dataclasses.dataclass(frozen=True)
class Static:
    """Hashable static configuration of one call (a custom_vjp nondiff arg)."""

    softcap: float | None
    chunk_size: int  # classes per slice of the dW update (and of the primal)
    token_chunk: int  # tokens per block of the primal's statistics
    token_path_chunk: int  # tokens per chunk of the forward rule
    need_sum: bool  # label smoothing: sum_c w_c z_c is needed
    reduction: str


class Coefs:
    """Per-token quantities of the closed form, known before the token loop.

    ``coef`` (reduction coefficient, 0 for absent tokens), ``a`` (weight of
    ``-z_y``: ``(1 - eps) w_y``), ``g0`` (weight of ``lse`` without z-loss),
    ``ek = eps / V``, ``total_w = sum_c w_c`` and ``w_y`` (None without class
    weights); ``eps`` None means no smoothing. ``invalid`` tokens (a present label
    outside ``[0, V)``) get a NaN ``coef``, so every gradient they reach is NaN.
    """

    def __init__(
        self, reduction: str, labels, present, cw, eps, v: int, dtype, invalid=None
    ):
        self.w_y = None if cw is None else cw[labels].astype(dtype)
        coef = reduction_coefficients(
            present, weights=None, denom_weights=self.w_y,
            reduction=reduction, base=None, dtype=dtype,
        )  # fmt: skip
        self.coef = nan_where(invalid, coef)
        a = jnp.ones(labels.shape, dtype) if self.w_y is None else self.w_y
        self.ek: Array | None = None
        self.total_w: Array = jnp.asarray(v, dtype) if cw is None else jnp.sum(cw)
        g0 = a  # d loss_n / d lse_n without the z-loss term
        if eps is not None:
            a = (1 - eps) * a
            ek = eps / jnp.asarray(v, dtype)
            g0 = a + ek * self.total_w
            self.ek = ek
        self.a: Array = a  # weight of -z_y in the loss
        self.g0: Array = g0


class TokenGrads(NamedTuple):
    lse: Array
    z_y: Array
    sum_wz: Array
    d_hidden: Array | None
    d_weight: Array | None
    d_bias: Array | None
    zc: Array | None


def token_chunk_grads(
    hidden: Array,
    weight: Array,
    bias: Array | None,
    labels: Array,
    class_weights: Array | None,
    coef: Array,
    a: Array,
    g0: Array,
    ek: Array | None,
    lam: Array | None,
    *,
    softcap: float | None,
    chunk_size: int,
    token_chunk: int,
    need_sum: bool,
    want_dh: bool = True,
    want_dw: bool = True,
    want_db: bool = True,
    want_zc: bool = False,
) -> TokenGrads:
    """Statistics and gradients of ``sum_n coef_n L_n`` in one pass over tokens.

    With ``z = softcap(hidden @ weight.T + bias)``, ``p = softmax(z)``:

        dz[n, c] = coef_n * ((g0_n + 2 lam lse_n) p[n, c] - a_n [c = y_n]
                              - ek w_c)        (times 1 - (z / cap)**2)

    Args:
        hidden, weight, bias, labels, class_weights: as `chunk_stats` (full
            vocabulary; ``labels`` in ``[0, V)``: out-of-range ones set to 0,
            with a NaN ``coef``).
        coef, a, g0: ``(N,)`` reduction coefficient (0 for absent tokens), weight
            of ``-z_y`` and of ``lse`` in the per-token loss.
        ek, lam: scalars ``eps / V`` (None without smoothing) and ``z_loss``
            (None without z-loss).
        softcap, chunk_size: as `chunk_stats`; ``token_chunk`` tokens per chunk.
        need_sum: also return ``sum_wz = sum_c w_c z_c``.
        want_dh, want_dw, want_db, want_zc: which accumulators to form
            (``zc[c] = sum_n coef_n z[n, c]``, for the class-weight gradient).

    Returns:
        `TokenGrads` ``(lse, z_y, sum_wz, d_hidden, d_weight, d_bias, zc)`` in the
        compute dtype; ``sum_wz`` zeros unless ``need_sum``; unwanted gradients
        None.
    """
    n, d = hidden.shape
    v = weight.shape[0]
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    in_dt = jnp.result_type(hidden, weight)
    t, c = token_chunk, max(1, min(chunk_size, v))
    zero = jnp.zeros((), cdt)
    cw = None if class_weights is None else class_weights.astype(cdt)
    cols = jnp.arange(v)

    def chunk(carry, t_start, t_lo):
        stats, dh, dw, db, zc = carry
        sl = lambda x: lax.dynamic_slice_in_dim(x, t_start, t, 0)  # noqa: E731
        h, lab = sl(hidden), sl(labels)
        own = (t_start + jnp.arange(t)) >= t_lo  # rows not done by the last chunk
        k = jnp.where(own, sl(coef), zero)
        z = _logits(h, weight, bias, softcap, cdt)
        m = jnp.max(z, axis=-1)
        m = jnp.where(jnp.isfinite(m), m, zero)
        lse = m + jnp.log(jnp.sum(jnp.exp(z - m[:, None]), axis=-1))
        zy = jnp.take_along_axis(z, lab[:, None], axis=1)[:, 0]
        new = [lse, zy]
        if need_sum:
            new.append(jnp.sum(z if cw is None else z * cw[None, :], axis=-1))
        stats = tuple(
            lax.dynamic_update_slice_in_dim(s, jnp.where(own, x, sl(s)), t_start, 0)
            for s, x in zip(stats, new)
        )
        g = sl(g0) if lam is None else sl(g0) + 2 * lam * lse
        dz = (k * g)[:, None] * jnp.exp(z - lse[:, None])
        dz = dz - jnp.where(cols[None, :] == lab[:, None], (k * sl(a))[:, None], zero)
        if ek is not None:
            dz = dz - (k * ek)[:, None] * (1 if cw is None else cw[None, :])
        if softcap is not None:
            dz = dz * (1 - jnp.square(z / jnp.asarray(softcap, cdt)))
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
        return stats, dh, dw, db, zc

    init = (
        tuple(jnp.zeros((n,), cdt) for _ in range(3 if need_sum else 2)),
        jnp.zeros((n, d), cdt) if want_dh else None,
        jnp.zeros((v, d), cdt) if want_dw else None,
        jnp.zeros((v,), cdt) if want_db and bias is not None else None,
        jnp.zeros((v,), cdt) if want_zc else None,
    )
    stats, dh, dw, db, zc = _token_blocks(n, t, chunk, init)
    sw = stats[2] if need_sum else jnp.zeros((n,), cdt)
    return TokenGrads(stats[0], stats[1], sw, dh, dw, db, zc)


def _add_weight_grad(dw: Array, dz: Array, h: Array, c: int, cdt) -> Array:
    """``dw += dz.T @ h`` in slices of ``c`` classes (no ``(V, D)`` temporary)."""
    v = dw.shape[0]
    dims = (((0,), (0,)), ((), ()))
    if c >= v:
        return dw + lax.dot_general(dz, h, dims, preferred_element_type=cdt)

    def step(dw, j):
        start, lo = _chunk_start(j, c, v)
        part = lax.dynamic_slice_in_dim(dz, start, c, 1)
        part = jnp.where((start + jnp.arange(c) >= lo)[None, :], part, 0)
        blk = lax.dot_general(part, h, dims, preferred_element_type=cdt)
        old = lax.dynamic_slice_in_dim(dw, start, c, 0)
        return lax.dynamic_update_slice_in_dim(dw, old + blk, start, 0), None

    return lax.scan(step, dw, jnp.arange(-(-v // c)))[0]


def _value(x):
    return x.value if isinstance(x, CustomVJPPrimal) else x


def _perturbed(x) -> bool:
    return isinstance(x, CustomVJPPrimal) and x.perturbed


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def scalar_loss(st: Static, hidden, weight, bias, class_weights, eps, lam, labels,
                present, invalid):  # fmt: skip
    """The reduced loss; ``eps`` / ``lam`` are compute-dtype scalars or None.

    ``labels`` has absent and out-of-range tokens set to 0, ``present`` marks the
    tokens that count and ``invalid`` those present with a label outside
    ``[0, V)`` (NaN loss; see ``jaxce._fused.prepare``). Not differentiated, this is the
    statistics path of ``jaxce._fused`` (one matmul, no gradient work).
    """
    from ._fused import _stats

    lse, zy, sw = _stats(
        hidden, weight, bias, labels, class_weights if st.need_sum else None,
        st.softcap, st.chunk_size, st.token_chunk, st.need_sum,
    )  # fmt: skip
    return _reduce(st, hidden, weight, labels, present, invalid, class_weights, eps,
                   lam, lse, zy, sw)[0]  # fmt: skip


def _reduce(st, hidden, weight, labels, present, invalid, cw, eps, lam, lse, zy, sw):
    """Reduced loss (output dtype) and its compute-dtype value from statistics."""
    from ._fused import token_losses

    loss, w_y = token_losses(
        lse, zy, sw, labels, cw, num_classes=weight.shape[0],
        label_smoothing=0.0 if eps is None else eps,
        z_loss=0.0 if lam is None else lam, invalid=invalid,
    )  # fmt: skip
    value = reduce_loss(
        loss, present=present, weights=None, denom_weights=w_y,
        reduction=st.reduction, base=None, out_dtype=lse.dtype,
    )  # fmt: skip
    return value.astype(hidden.dtype), value


def _scalar_fwd(st: Static, hidden, weight, bias, class_weights, eps, lam, labels,
                present, invalid):  # fmt: skip
    want = [_perturbed(x) for x in (hidden, weight, bias, class_weights, eps, lam)]
    h, w, b, cw, eps, lam, labels, present, invalid = map(
        _value,
        (hidden, weight, bias, class_weights, eps, lam, labels, present, invalid),
    )
    v = w.shape[0]
    cdt = compute_dtype(h.dtype, w.dtype)
    cf = Coefs(st.reduction, labels, present, cw, eps, v, cdt, invalid)
    want_zc = want[3] and st.need_sum
    lse, zy, sw, dh, dw, db, zc = token_chunk_grads(
        h, w, b, labels, cw, cf.coef, cf.a, cf.g0, cf.ek, lam,
        softcap=st.softcap, chunk_size=st.chunk_size,
        token_chunk=st.token_path_chunk, need_sum=st.need_sum,
        want_dh=want[0], want_dw=want[1], want_db=want[2], want_zc=want_zc,
    )  # fmt: skip
    out, value = _reduce(st, h, w, labels, present, invalid, cw, eps, lam, lse, zy, sw)
    dcw = d_eps = d_lam = None
    if want[3] and cw is not None:
        dcw = _class_weight_grad(st, cf, labels, present, eps, lse, zy, zc, value, v)
        dcw = dcw.astype(cw.dtype)
    k = cf.coef
    if want[4] and eps is not None:
        nll = lse - zy if cf.w_y is None else cf.w_y * (lse - zy)
        per = -nll + (cf.total_w * lse - sw) / jnp.asarray(v, cdt)
        d_eps = jnp.sum(k * per).astype(eps.dtype)
    if want[5] and lam is not None:
        d_lam = jnp.sum(k * jnp.square(lse)).astype(lam.dtype)
    res = (
        None if dh is None else dh.astype(h.dtype),
        None if dw is None else dw.astype(w.dtype),
        None if db is None or b is None else db.astype(b.dtype),
        dcw, d_eps, d_lam,
    )  # fmt: skip
    return out, res


def _class_weight_grad(
    st: Static,
    cf: Coefs,
    labels: Array,
    present: Array,
    eps: Array | None,
    lse: Array,
    zy: Array,
    zc: Array | None,
    value: Array,
    v: int,
) -> Array:
    """``d R / d w`` from the statistics and ``zc = sum_n coef_n z_n``.

    ``d L_n / d w_c = (1 - eps) (lse_n - z_yn) [c = y_n] + eps / V (lse_n - z_nc)``;
    ``"mean"`` also divides by ``sum_n present_n w_{y_n}`` (quotient rule).
    """
    k, cdt = cf.coef, lse.dtype
    one_m = jnp.ones((), cdt) if eps is None else 1 - eps
    dcw = jnp.zeros((v,), cdt).at[labels].add(k * one_m * (lse - zy))
    if cf.ek is not None and zc is not None:
        dcw = dcw + cf.ek * (jnp.sum(k * lse) - zc)
    if st.reduction == "mean" and cf.w_y is not None:
        count = jnp.zeros((v,), cdt).at[labels].add(present.astype(cdt))
        den = jnp.sum(jnp.where(present, cf.w_y, jnp.zeros((), cdt)))
        dcw = dcw - safe_divide(value, den) * count
    return dcw


def _scalar_bwd(st: Static, res, ct):
    if isinstance(ct, SymbolicZero):
        return (None,) * len(res) + (None, None, None)
    grads = tuple(None if r is None else (ct.astype(r.dtype) * r) for r in res)
    return grads + (None, None, None)


scalar_loss.defvjp(_scalar_fwd, _scalar_bwd, symbolic_zeros=True)


def token_path_loss(p, *, label_smoothing, z_loss, reduction: str) -> Array:
    """`scalar_loss` for a ``jaxce._fused.Prepared`` (scalar reductions only)."""
    st = Static(
        softcap=p.softcap, chunk_size=p.chunk_size, token_chunk=p.token_chunk,
        token_path_chunk=token_chunk_for(p.labels.shape[0], p.weight.shape[0]),
        need_sum=p.need_sum, reduction=reduction,
    )  # fmt: skip
    eps = jnp.asarray(label_smoothing, p.dtype) if p.need_sum else None
    static_zero = is_static_zero(z_loss)
    lam = None if static_zero else jnp.asarray(z_loss, p.dtype)
    return cast(Callable[..., Array], scalar_loss)(
        st, p.hidden, p.weight, p.bias, p.class_weights, eps, lam, p.labels,
        p.present, p.invalid,
    )  # fmt: skip
