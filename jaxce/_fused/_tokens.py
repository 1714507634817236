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
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jaxtyping import Array

from .._core import Reducer, compute_dtype, make_reducer, safe_divide
from ._blocks import Operands, Static, Stats
from ._prepare import Prepared
from ._recompute import stats, token_losses
from ._token_grads import Coefs, TokenGrads, Want, coefficients, token_chunk_grads


class Params(NamedTuple):
    """The differentiable inputs of `scalar_loss`."""

    hidden: Array
    weight: Array
    bias: Array | None
    class_weights: Array | None  # compute dtype
    eps: Array | None  # label smoothing, compute dtype (None: statically 0)
    lam: Array | None  # z-loss weight, compute dtype (None: statically 0)
    weights: Array | None = None  # (N,) sample weights, compute dtype
    normalizer: Array | None = None  # scalar denominator, compute dtype


class Targets(NamedTuple):
    """The non-differentiable per-token inputs of `scalar_loss`."""

    labels: Array  # absent and out-of-range tokens set to 0
    present: Array  # tokens that count
    invalid: Array  # present tokens with a label outside [0, V): NaN loss
    num_present: Array | None = None  # compact=True: the tokens after it are absent


def _is_primal(x) -> bool:
    return isinstance(x, CustomVJPPrimal)


def _unwrap(tree, field: str):
    """``value`` / ``perturbed`` of each `CustomVJPPrimal` leaf (None kept)."""
    return jax.tree.map(lambda x: getattr(x, field), tree, is_leaf=_is_primal)


def _reducer(st: Static, x: Params, present: Array, dtype) -> Reducer:
    return make_reducer(
        present,
        weights=x.weights,
        reduction=st.reduction,
        base=None,
        dtype=dtype,
        out_dtype=dtype,
        normalizer=x.normalizer,
    )


def _reduce(st: Static, x: Params, y: Targets, s: Stats) -> Array:
    """The reduced loss in the compute dtype, from the statistics."""
    loss, w_y = token_losses(
        s,
        y.labels,
        x.class_weights,
        num_classes=x.weight.shape[st.class_axis],
        label_smoothing=0.0 if x.eps is None else x.eps,
        z_loss=0.0 if x.lam is None else x.lam,
        invalid=y.invalid,
    )
    return _reducer(st, x, y.present, s.lse.dtype).reduce(loss, w_y)


def _operands(x: Params, y: Targets) -> Operands:
    return Operands(
        x.hidden, x.weight, x.bias, y.labels, x.class_weights, y.num_present
    )


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
    v = x.weight.shape[st.class_axis]
    cdt = compute_dtype(x.hidden.dtype, x.weight.dtype)
    reducer = _reducer(st, x, y.present, cdt)
    cf = coefficients(reducer, ops, x.eps, x.lam, y.invalid, st.weight_layout)
    flags = Want(
        d_hidden=bool(want.hidden),
        d_weight=bool(want.weight),
        d_bias=bool(want.bias),
        zc=bool(want.class_weights) and st.need_sum,
        sum_wz=st.need_sum,
    )
    g = token_chunk_grads(ops, cf, st, flags)
    value, d_wts, d_norm = _reduce_and_option_grads(st, x, y, g.stats, want)
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
            d_wts,
            d_norm,
        )
    )
    return value.astype(x.hidden.dtype), res


def _reduce_and_option_grads(st: Static, x: Params, y: Targets, s: Stats, want):
    """The reduced loss and its gradients w.r.t. ``weights`` and ``normalizer``.

    Both only enter the O(N) reduction of the per-token losses, so their
    gradients are its autodiff (``dR / dw_n = s L_n / Z`` minus, for ``"mean"``,
    the denominator's ``R d_n / Z``); None when not asked for.
    """
    wts = x.weights if want.weights else None
    norm = x.normalizer if want.normalizer else None
    if wts is None and norm is None:
        return _reduce(st, x, y, s), None, None

    def reduce_of(wts, norm):
        x_new = x._replace(
            weights=x.weights if wts is None else wts,
            normalizer=x.normalizer if norm is None else norm,
        )
        return _reduce(st, x_new, y, s)

    value, vjp = jax.vjp(reduce_of, wts, norm)
    d_wts, d_norm = vjp(jnp.ones((), value.dtype))
    return value, d_wts, d_norm


def _class_weight_grad(
    st: Static, cf: Coefs, x: Params, y: Targets, g: TokenGrads, value: Array
) -> Array:
    """``d R / d w`` from the statistics and ``zc = sum_n coef_n z_n``.

    ``d L_n / d w_c = (1 - eps) (lse_n - z_yn) [c = y_n] + eps / V (lse_n - z_nc)``;
    ``"mean"`` also divides by ``sum_n present_n w_{y_n}`` (quotient rule).
    """
    lse, zy, _ = g.stats
    k, cdt, v = cf.coef, lse.dtype, x.weight.shape[st.class_axis]
    one_m = jnp.ones((), cdt) if x.eps is None else 1 - x.eps
    dcw = jnp.zeros((v,), cdt).at[y.labels].add(k * one_m * (lse - zy))
    if cf.ek is not None and g.zc is not None:
        dcw = dcw + cf.ek * (jnp.sum(k * lse) - g.zc)
    if st.reduction == "mean" and cf.w_y is not None and x.normalizer is None:
        zero = jnp.zeros((), cdt)
        sw = y.present.astype(cdt) if x.weights is None else x.weights
        sw = jnp.where(y.present, sw, zero)  # sample weights of present tokens
        count = jnp.zeros((v,), cdt).at[y.labels].add(sw)
        den = jnp.sum(sw * cf.w_y)
        dcw = dcw - safe_divide(value, den) * count
    return dcw


def _scalar_bwd(st: Static, res: Params, ct):
    if isinstance(ct, SymbolicZero):
        return Params._make((None,) * len(res)), None
    return jax.tree.map(lambda r: ct.astype(r.dtype) * r, res), None


scalar_loss.defvjp(_scalar_fwd, _scalar_bwd, symbolic_zeros=True)


def token_path_loss(p: Prepared) -> Array:
    """`scalar_loss` of a `Prepared` call (scalar reductions only)."""
    r = p.reducer
    x = Params(
        p.hidden,
        p.weight,
        p.bias,
        p.class_weights,
        p.eps(),
        p.lam(),
        r.weights,
        r.normalizer,
    )
    y = Targets(p.labels, p.present, p.invalid, p.num_present)
    return cast(Callable[..., Array], scalar_loss)(p.static(), x, y)
