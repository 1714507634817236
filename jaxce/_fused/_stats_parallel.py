r"""Per-token statistics (`linear_token_stats`) on one device or vocabulary-parallel.

`run_stats` / `run_grads` are the two passes of the statistics' ``custom_vjp``.
Without a `Layout` they are the kernels of `._stat_blocks` on the whole
vocabulary. With one, under ``jax.shard_map``, each device streams its own block
of ``weight`` (split over ``vocab_axis``) for its rows of ``hidden`` (split over
``batch_axis``), and the online accumulators of the blocks are combined across
the vocabulary axis exactly as the blocks of one device are (`combine`):

    M = pmax(m),  delta = (m - M) / tau,  s' = e^delta s,  t' = e^delta (t + delta s),
    S = psum(s'),  T = psum(t'),   z_y = psum(z_y),
    argmax = pmin(global index of the block's max, over the blocks whose max is M)

so ``lse = M / tau + log S`` and ``H = log S - T / S`` are the single-device
values, and ties still go to the first index. The backward recomputes each
device's blocks with the global ``lse`` and ``H``; ``d_hidden`` is ``psum``-ed
over the vocabulary axis, ``d_weight`` / ``d_bias`` over the batch axis. Neither
``weight`` nor the logits are gathered.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array

from .._core import compute_dtype
from ._mesh import Layout
from ._stat_blocks import (
    Acc,
    Cotangents,
    Raw,
    Shift,
    StatConfig,
    StatOperands,
    finish,
    grads_pass,
    shifted,
    stats_pass,
)
from ._weight_layout import num_classes


def specs(lay: Layout, ops: StatOperands) -> StatOperands:
    """``shard_map`` specs of the operands (None for an absent bias)."""
    row = lay.row()
    bias = None if ops.bias is None else P(lay.vocab_axis)
    specs = (lay.hidden_spec(), lay.weight_spec(), bias, row, row)
    return StatOperands._make(specs)  # a spec tree shaped like the operands


def combine(lay: Layout, acc: Acc, cfg: StatConfig, offset) -> Acc:
    """The accumulators of the whole vocabulary from each device's block."""
    arg = acc.arg + jnp.asarray(offset, jnp.int32)
    if lay.size(lay.vocab_axis) == 1:
        return acc._replace(arg=arg)
    axis = lay.vocab_axis
    big, big_safe = lay.max_vocab(acc.m)
    # A block with no class left has m = -inf and s = t = 0: no shift then.
    shift = jnp.where(jnp.isfinite(acc.m), shifted(acc.m - big_safe, cfg), 0)
    alpha = jnp.exp(shift)
    s = lax.psum(alpha * acc.s, axis)
    t = lax.psum(alpha * (acc.t + shift * acc.s), axis)
    first = jnp.where(acc.m == big, arg, jnp.iinfo(jnp.int32).max)
    return Acc(big, s, t, lax.psum(acc.z_y, axis), lax.pmin(first, axis))


def _local_stats(lay: Layout, cfg: StatConfig, ops: StatOperands):
    v_local = num_classes(ops.weight, cfg.layout)
    acc = stats_pass(lay.localise(ops), cfg, lay.real_classes(v_local))
    return finish(combine(lay, acc, cfg, lay.vocab_offset(v_local)), cfg)


def run_stats(lay: Layout | None, cfg: StatConfig, ops: StatOperands):
    """`(Raw, Shift)` of every token: on one device (``lay`` None) or sharded."""
    if lay is None:
        return finish(stats_pass(ops, cfg), cfg)
    row = lay.row()
    fn = jax.shard_map(
        functools.partial(_local_stats, lay, cfg),
        mesh=lay.mesh,
        in_specs=(specs(lay, ops),),
        out_specs=(Raw._make((row,) * 4), Shift._make((row,) * 2)),
        check_vma=False,
    )
    return fn(ops)


def _local_grads(lay: Layout, cfg: StatConfig, ops, shift, entropy, cts):
    limit = lay.real_classes(num_classes(ops.weight, cfg.layout))
    cdt = compute_dtype(ops.hidden.dtype, ops.weight.dtype)
    # Summed over the batch axis: accumulate in the compute dtype, cast once.
    wdt = ops.weight.dtype if lay.batch_axis is None else cdt
    dh, dw, db = grads_pass(lay.localise(ops), shift, entropy, cts, cfg, limit, wdt)
    dh = lay.psum_vocab(dh)
    dw = lay.psum_batch(dw).astype(ops.weight.dtype)
    return dh, dw, None if db is None else lay.psum_batch(db)


def run_grads(
    lay: Layout | None,
    cfg: StatConfig,
    ops: StatOperands,
    shift: Shift,
    entropy: Array,
    cts: Cotangents,
) -> tuple[Array, Array, Array | None]:
    """``(d_hidden, d_weight, d_bias)`` (see `grads_pass`), split like the inputs."""
    if lay is None:
        return grads_pass(ops, shift, entropy, cts, cfg)
    sp, row = specs(lay, ops), lay.row()
    fn = jax.shard_map(
        functools.partial(_local_grads, lay, cfg),
        mesh=lay.mesh,
        in_specs=(sp, Shift._make((row,) * 2), row, Cotangents._make((row,) * 3)),
        out_specs=(sp.hidden, sp.weight, sp.bias),
        check_vma=False,
    )
    place = functools.partial(lay.place, spec=row)
    return fn(ops, shift, place(entropy), Cotangents._make(map(place, cts)))
