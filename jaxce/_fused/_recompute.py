"""Per-token statistics with recompute-in-backward, and the loss composed from them.

The loss only needs three per-token statistics of the logits ``z`` (`Stats`):
``lse = logsumexp_c z``, the target logit ``z_y`` and (label smoothing only)
``sum_wz = sum_c w_c z_c``. `fused_stats` computes them vocabulary block by
block under a ``jax.custom_vjp`` whose forward saves only ``lse`` (O(N)); the
backward recomputes each logits block (as Cut Cross Entropy does; four matmuls
with the forward). The loss is then composed from the statistics in plain JAX
(`token_losses`, then the `Reducer`), so autodiff of that O(N) part
gives the per-token cotangents of the statistics.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._core import is_static_zero, nan_where
from ._blocks import Operands, Static, Stats, chunk_grads, chunk_stats
from ._prepare import Prepared


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_stats(st: Static, ops: Operands) -> Stats:
    """`Stats` ``(lse, z_y, sum_wz)`` per token; gradients by recomputation.

    ``ops.class_weights`` only enters ``sum_wz`` (and only with
    ``st.need_sum``); differentiable in ``hidden``, ``weight``, ``bias`` and
    ``class_weights``.
    """
    online = chunk_stats(ops, st)
    return Stats(online.lse(), online.z_y, online.sum_wz)


def _stats_fwd(st: Static, ops: Operands):
    out = stats(st, ops)
    return out, (ops, out.lse)


def _stats_bwd(st: Static, res, cts):
    ops, lse = res
    g = chunk_grads(ops, lse, Stats(*cts), st)
    bias, cw = ops.bias, ops.class_weights
    db = None if bias is None or g.d_bias is None else g.d_bias.astype(bias.dtype)
    dcw = None
    if cw is not None:
        dcw = g.d_class_weights
        dcw = jnp.zeros_like(cw) if dcw is None else dcw.astype(cw.dtype)
    d_hidden = g.d_hidden.astype(ops.hidden.dtype)
    return (Operands._make((d_hidden, g.d_weight, db, None, dcw, None)),)  # no d labels


fused_stats.defvjp(_stats_fwd, _stats_bwd)


def stats(st: Static, ops: Operands) -> Stats:
    """`fused_stats` with its result typed (for pyright)."""
    return cast(Stats, fused_stats(st, ops))


def token_losses(
    stats: Stats,
    labels: Array,
    class_weights: Array | None,
    *,
    num_classes: int,
    label_smoothing: object,
    z_loss: object,
    invalid: Array | None = None,
    w_y: Array | None = None,
) -> tuple[Array, Array | None]:
    """Per-token loss from the statistics, and its ``"mean"`` weight ``w_y``.

    Exactly as `jaxce.sparse_softmax_cross_entropy` composes them:

        L = (1 - eps) w_y (lse - z_y) + eps / V (lse sum_c w_c - sum_wz)
            + z_loss lse**2

    Tokens marked ``invalid`` (a present label outside ``[0, V)``) get a NaN loss.
    ``w_y`` (``class_weights[labels]``) may be passed in when it was gathered
    elsewhere (the vocabulary-parallel loss all-reduces it); ``num_classes`` is
    the global vocabulary size. ``w_y`` is None without class weights.
    """
    lse, z_y, sum_wz = stats
    dtype = lse.dtype
    if class_weights is None:
        w_y = None
    elif w_y is None:
        w_y = class_weights[labels]
    nll = lse - z_y if w_y is None else w_y * (lse - z_y)
    if not is_static_zero(label_smoothing):
        eps = jnp.asarray(label_smoothing, dtype)
        k = jnp.asarray(num_classes, dtype)
        total_w = k if class_weights is None else jnp.sum(class_weights)
        # sum_c w_c (lse - z_c) = lse * sum_c w_c - sum_c w_c z_c
        nll = (1 - eps) * nll + eps / k * (lse * total_w - sum_wz)
    if not is_static_zero(z_loss):
        nll = nll + jnp.asarray(z_loss, dtype) * jnp.square(lse)
    return nan_where(invalid, nll), w_y


def recompute_loss(p: Prepared) -> Array:
    """The loss of one device through `fused_stats` (any reduction)."""
    s = stats(p.static(), p.operands())
    loss, w_y = token_losses(
        s,
        p.labels,
        p.class_weights,
        num_classes=p.num_classes,
        label_smoothing=p.label_smoothing,
        z_loss=p.z_loss,
        invalid=p.invalid,
    )
    return p.reducer.reduce(loss, w_y)
