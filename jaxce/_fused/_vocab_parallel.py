r"""Vocabulary-parallel (Megatron-style) fused ``linear -> cross-entropy``.

Under ``jax.shard_map`` each device holds a block of rows of ``hidden`` /
``labels`` (split over ``batch_axis``) and a block of rows of ``weight`` /
``bias`` / ``class_weights`` (split over ``vocab_axis``). Each device streams its
own vocabulary block with the vocabulary-block kernels of the single-device
loss, keeping per-token statistics only, and the statistics are combined across
the vocabulary axis with all-reduces:

- ``pmax`` of the running max ``m`` and ``psum`` of ``sum_c exp(z_c - M)``
  (the global log-sum-exp);
- ``psum`` of the target logit ``z_y`` and of its class weight ``w_y`` (only the
  device owning class ``y`` adds them);
- with label smoothing, ``psum`` of ``sum_c w_c z_c``; smoothing then divides by
  the **global** vocabulary size ``V`` (dividing by the local block size is
  Megatron-LM issue #737).

The backward pass (a ``jax.custom_vjp`` around the ``shard_map``) recomputes each
logits block, so memory stays O(block) in both passes. The hidden gradient is
``psum``-ed over the vocabulary axis; the weight, bias and class-weight gradients
over the batch axis, so they come back sharded like ``weight``. Neither
``weight`` nor the logits are ever gathered. What follows the per-token
statistics (class weights, smoothing, z-loss, masks, reductions) is ``(N,)``
arithmetic outside the ``shard_map`` (`token_losses`), as in
`jaxce.sparse_softmax_cross_entropy`.

Sizes the mesh does not divide are padded (`vocab_parallel_loss`): padding
classes are masked to ``-inf`` logits in the kernels (``limit``), padding tokens
are sliced off the statistics before the per-token losses. The caller's arrays
of such sizes cannot be split (no uneven layouts), so they and their gradients
are replicated: a padded vocabulary costs one all-gather of the weight gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array

from ._blocks import (
    Operands,
    Static,
    Stats,
    chunk_grads,
    chunk_stats,
    class_axis,
    lse_from_stats,
)
from ._mesh import Layout, pad_rows
from ._prepare import Prepared, packing_order, unpack
from ._recompute import token_losses


def _owned(ops: Operands, v_local: int) -> Array:
    """Tokens whose (local) label is in this device's block of ``v_local``."""
    return (ops.labels >= 0) & (ops.labels < v_local)


def _pack(ops: Operands, present: Array, *rows: Array):
    """This device's present tokens first (``compact=True``): the operands with
    ``num_present`` (the token blocks after them are skipped), the per-token
    ``rows`` permuted alike, and the permutation."""
    order = packing_order(present)
    count = jnp.sum(present, dtype=jnp.int32)
    ops = ops._replace(
        hidden=ops.hidden[order], labels=ops.labels[order], num_present=count
    )
    return ops, tuple(r[order] for r in rows), order


def _local_stats(lay: Layout, st: Static, ops: Operands, *present: Array):
    """Per-token ``(lse, z_y, sum_wz, w_y)`` of this device's rows, all classes.

    With ``present`` (``compact=True``) only the token blocks that hold a
    present token are computed; the others' statistics are finite and unused.
    """
    ops = lay.localise(ops)
    order = None
    if present:
        ops, _, order = _pack(ops, present[0])
    v_local = lay.classes(ops.weight)
    m, s, zy, sw = chunk_stats(ops, st, lay.real_classes(v_local))
    if lay.size(lay.vocab_axis) > 1:
        big, big_safe = lay.max_vocab(m)
        s = lax.psum(s * jnp.exp(m - big_safe), lay.vocab_axis)
        m = big
    lse = lse_from_stats(m, s)
    cw = ops.class_weights
    if cw is None:
        wy = jnp.zeros_like(zy)
    else:
        wy = jnp.where(
            _owned(ops, v_local), cw[jnp.clip(ops.labels, 0, v_local - 1)], 0
        )
    zy, sw, wy = (lay.psum_vocab(x) for x in (zy, sw, wy))
    out = (lse, zy, sw, wy)
    return out if order is None else tuple(unpack(x, order) for x in out)


def _local_grads(lay: Layout, st: Static, ops: Operands, lse, cts, *present: Array):
    """This device's share of the gradients; all-reduced to the input shardings."""
    ops = lay.localise(ops)
    order = None
    if present:  # absent tokens have zero cotangents: skipping them is exact
        ops, (lse, *cts), order = _pack(ops, present[0], lse, *cts)
    h, w, b, _, cw, _ = ops
    g_lse, g_zy, g_sum, g_wy = cts
    cdt = lse.dtype
    g = chunk_grads(
        ops,
        lse,
        Stats(g_lse, g_zy, g_sum),
        st,
        weight_grad_dtype=w.dtype if lay.batch_axis is None else cdt,
        limit=lay.real_classes(lay.classes(w)),
    )
    dh = g.d_hidden if order is None else unpack(g.d_hidden, order)
    dh = lay.psum_vocab(dh).astype(h.dtype)
    dw = lay.psum_batch(g.d_weight).astype(w.dtype)
    db = g.d_bias
    if b is not None and db is not None:
        db = lay.psum_batch(db).astype(b.dtype)
    dcw = g.d_class_weights
    if cw is not None:
        # d w_y / d cw: scatter g_wy onto the owned labels (others dropped).
        v_local = lay.classes(w)
        idx = jnp.where(_owned(ops, v_local), ops.labels, v_local)
        d_wy = jnp.zeros((v_local,), cdt).at[idx].add(g_wy.astype(cdt), mode="drop")
        dcw = d_wy if dcw is None else dcw.astype(cdt) + d_wy
        dcw = lay.psum_batch(dcw).astype(cw.dtype)
    return dh, dw, db, dcw


def _stats_call(lay: Layout, st: Static, ops: Operands, present: Array | None):
    row = lay.row()
    extra = () if present is None else (present,)
    fn = jax.shard_map(
        functools.partial(_local_stats, lay, st),
        mesh=lay.mesh,
        in_specs=(lay.specs(ops), *(row for _ in extra)),
        out_specs=(row, row, row, row),
        check_vma=False,
    )
    return fn(ops, *extra)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sharded_stats(lay: Layout, st: Static, ops: Operands, present: Array | None):
    """Per-token statistics; ``present`` (or None): pack each device's rows."""
    return _stats_call(lay, st, ops, present)


def _sharded_stats_fwd(lay: Layout, st: Static, ops: Operands, present):
    out = _stats_call(lay, st, ops, present)
    return out, (ops, out[0], present)


def _sharded_stats_bwd(lay: Layout, st: Static, res, cts):
    ops, lse, present = res
    row, specs = lay.row(), lay.specs(ops)
    extra = () if present is None else (present,)
    fn = jax.shard_map(
        functools.partial(_local_grads, lay, st),
        mesh=lay.mesh,
        in_specs=(specs, row, (row,) * 4, *(row for _ in extra)),
        out_specs=(specs.hidden, specs.weight, specs.bias, specs.class_weights),
        check_vma=False,
    )
    g = tuple(lay.place(x, row) for x in cts)
    dh, dw, db, dcw = fn(ops, lse, g, *extra)
    # labels and the presence mask: no cotangent
    return Operands._make((dh, dw, db, None, dcw, None)), None


_sharded_stats.defvjp(_sharded_stats_fwd, _sharded_stats_bwd)


def _padded(ops: Operands, n: int, v: int, weight_layout: str) -> Operands:
    """The operands padded to ``n`` tokens and ``v`` classes (zeros, label 0)."""
    opt = lambda x: None if x is None else pad_rows(x, v)  # noqa: E731
    return Operands(
        pad_rows(ops.hidden, n),
        pad_rows(ops.weight, v, class_axis(weight_layout)),
        opt(ops.bias),
        pad_rows(ops.labels, n),
        opt(ops.class_weights),
    )


def vocab_parallel_loss(p: Prepared, lay: Layout) -> Array:
    r"""The loss of a `Prepared` call on the mesh of ``lay``.

    ``hidden`` / ``labels`` / ``where`` are split over ``batch_axis`` and
    ``weight`` / ``bias`` / ``class_weights`` over ``vocab_axis`` (either may be
    None: that dimension is then replicated); the block sizes apply to each
    device's rows and vocabulary block. Per token, with the all-reduced
    $\operatorname{lse}$, $z_y$, $w_y$ and $\sum_c w_c z_c$:

    $$L = (1 - \varepsilon)\, w_y (\operatorname{lse} - z_y)
        + \frac{\varepsilon}{V} \Big(\operatorname{lse} \sum_c w_c
        - \sum_c w_c z_c\Big) + \lambda\, \operatorname{lse}^2$$

    with $V$ the global vocabulary size.

    Sizes that do not divide are padded here, inside the differentiated
    function, so the caller's arrays keep their shapes and so do their
    gradients (the padding's gradient is sliced off by the transpose of the
    pad). ``V`` goes up to a multiple of the vocabulary axis with zero rows of
    ``weight`` / ``bias`` / ``class_weights`` that the kernels mask to ``-inf``
    logits (`Layout.num_classes`): out of the log-sum-exp, the smoothing sum and
    every gradient; smoothing still divides by the real ``V``. ``N`` goes up to
    a multiple of the batch axis with zero rows (label 0) whose statistics are
    sliced off before the per-token losses, so they are in no reduction (nor
    its denominator) and get a zero cotangent. On a mesh with ``Explicit`` axes
    the statistics are resharded to replicated before that slice (an uneven
    split is not an array layout), so with a padded ``N`` the ``"none"`` losses
    come back replicated.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, jaxce
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("model",))
        >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
        >>> w = jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 1.0], [2.0, 0.0]])
        >>> y = jnp.array([0, 3, 2])
        >>> print(jaxce.linear_softmax_cross_entropy(
        ...     h, w, y, label_smoothing=0.1, mesh=mesh, vocab_axis="model"))
        1.00720
        >>> print(jaxce.sparse_softmax_cross_entropy(h @ w.T, y, label_smoothing=0.1))
        1.00720

    References:
        Shoeybi et al., *Megatron-LM*, 2019 (vocabulary-parallel cross-entropy),
        https://arxiv.org/abs/1909.08053; NVIDIA/Megatron-LM issue #737 (label
        smoothing over the local vocabulary).
    """
    nb, nv = lay.size(lay.batch_axis), lay.size(lay.vocab_axis)
    n = p.hidden.shape[0]
    lay = dataclasses.replace(lay, weight_layout=p.weight_layout)
    lay, n_pad, v_pad = lay.padded(n, p.num_classes)
    st = p.static(n_pad // nb, v_pad // nv)
    ops = _padded(p.operands(), n_pad, v_pad, p.weight_layout)
    specs, row, vocab = lay.specs(ops), lay.row(), P(lay.vocab_axis)
    ops = Operands(
        lay.place(ops.hidden, specs.hidden),
        lay.place(ops.weight, specs.weight),
        lay.place(ops.bias, vocab),
        lay.place(ops.labels, row),
        lay.place(ops.class_weights, vocab),
    )
    present = lay.place(pad_rows(p.present, n_pad), row) if p.compact else None
    out = cast(tuple[Array, ...], _sharded_stats(lay, st, ops, present))
    if n_pad == n:
        rows = functools.partial(lay.place, spec=row)
    else:  # drop the padded tokens (replicated: an uneven split is no layout)
        out = tuple(lay.unpad(x, n) for x in out)
        rows = lambda x: x  # noqa: E731
    lse, z_y, sum_wz, w_y = out
    # label smoothing's K is the GLOBAL, real vocabulary size v (Megatron #737)
    nll, w_y = token_losses(  # class weights: their sum, padding 0, split like w
        Stats(lse, z_y, sum_wz),
        p.labels,
        ops.class_weights,
        num_classes=p.num_classes,
        label_smoothing=p.label_smoothing,
        z_loss=p.z_loss,
        invalid=rows(p.invalid),
        w_y=w_y,
    )
    wts = p.reducer.weights
    reducer = dataclasses.replace(
        p.reducer,
        present=rows(p.present),
        weights=None if wts is None else rows(wts),
    )
    return reducer.reduce(nll, w_y)
