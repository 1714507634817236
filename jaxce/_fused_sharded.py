"""Vocabulary-parallel (Megatron-style) fused ``linear -> cross-entropy``.

`jaxce.linear_softmax_cross_entropy` calls `sharded_linear_softmax_cross_entropy`
when given a ``mesh``. Under ``jax.shard_map`` each device holds a block of rows
of ``hidden`` / ``labels`` (split over ``batch_axis``) and a block of rows of
``weight`` / ``bias`` / ``class_weights`` (split over ``vocab_axis``). Each device
streams its own vocabulary block with the chunked kernels of the single-device
loss (``jaxce._fused_chunks``), keeping per-token statistics only, and the
statistics are combined across the vocabulary axis with all-reduces:

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
arithmetic outside the ``shard_map``, as in `jaxce.sparse_softmax_cross_entropy`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, ArrayLike

from ._fused import prepare, token_losses
from ._fused_chunks import (
    chunk_grads,
    chunk_stats,
    default_chunks,
    lse_from_stats,
)
from ._options import reduce_loss

AxisName = str | tuple[str, ...] | None


def _names(axis: AxisName) -> tuple[str, ...]:
    if axis is None:
        return ()
    return (axis,) if isinstance(axis, str) else tuple(axis)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of one sharded call (hashable: a custom_vjp nondiff arg)."""

    mesh: Mesh
    batch_axis: AxisName
    vocab_axis: AxisName
    softcap: float | None
    chunk_size: int
    token_chunk: int
    need_sum: bool

    def size(self, axis: AxisName) -> int:
        return int(np.prod([self.mesh.shape[a] for a in _names(axis)]))

    def psum_vocab(self, x):
        return lax.psum(x, self.vocab_axis) if self.size(self.vocab_axis) > 1 else x

    def psum_batch(self, x):
        return lax.psum(x, self.batch_axis) if self.size(self.batch_axis) > 1 else x

    def vocab_offset(self, v_local: int):
        """First global class of this device's vocabulary block."""
        index = 0
        for a in _names(self.vocab_axis):  # row-major over a tuple of axes
            index = index * self.mesh.shape[a] + lax.axis_index(a)
        return index * v_local

    def specs(self, b, cw):
        row, vocab = P(self.batch_axis), P(self.vocab_axis)
        opt = lambda x: None if x is None else vocab  # noqa: E731
        return row, P(self.batch_axis, None), P(self.vocab_axis, None), opt(b), opt(cw)

    def place(self, x, spec):
        """Reshard ``x`` onto ``spec`` on meshes with explicit axis types.

        Auto meshes need nothing: ``shard_map`` reshards its inputs itself.
        """
        if x is None or not _names(self.batch_axis) + _names(self.vocab_axis):
            return x
        if all(t == AxisType.Explicit for t in self.mesh.axis_types):
            return jax.sharding.reshard(x, NamedSharding(self.mesh, spec))
        return x


def _local_stats(plan: _Plan, h, w, b, y, cw):
    """Per-token ``(lse, z_y, sum_wz, w_y)`` of this device's rows, all classes."""
    v_local = w.shape[0]
    y_local = y - jnp.asarray(plan.vocab_offset(v_local), y.dtype)
    m, s, zy, sw = chunk_stats(
        h, w, b, y_local, cw if plan.need_sum else None,
        softcap=plan.softcap, chunk_size=plan.chunk_size,
        token_chunk=plan.token_chunk, need_sum=plan.need_sum,
    )  # fmt: skip
    if plan.size(plan.vocab_axis) > 1:
        big = lax.pmax(m, plan.vocab_axis)
        big_safe = jnp.where(jnp.isfinite(big), big, 0)
        s = lax.psum(s * jnp.exp(m - big_safe), plan.vocab_axis)
        m = big
    lse = lse_from_stats(m, s)
    if cw is None:
        wy = jnp.zeros_like(zy)
    else:
        hit = (y_local >= 0) & (y_local < v_local)
        wy = jnp.where(hit, cw[jnp.clip(y_local, 0, v_local - 1)], 0)
    zy, sw, wy = (plan.psum_vocab(x) for x in (zy, sw, wy))
    return lse, zy, sw, wy


def _local_grads(plan: _Plan, h, w, b, y, cw, lse, g_lse, g_zy, g_sum, g_wy):
    """This device's share of the gradients; all-reduced to the input shardings."""
    v_local = w.shape[0]
    y_local = y - jnp.asarray(plan.vocab_offset(v_local), y.dtype)
    cdt = lse.dtype
    dh, dw, db, dcw = chunk_grads(
        h, w, b, y_local, cw if plan.need_sum else None, lse, g_lse, g_zy,
        g_sum if plan.need_sum else None,
        softcap=plan.softcap, chunk_size=plan.chunk_size,
        token_chunk=plan.token_chunk,
        weight_grad_dtype=w.dtype if plan.batch_axis is None else cdt,
    )  # fmt: skip
    dh = plan.psum_vocab(dh).astype(h.dtype)
    dw = plan.psum_batch(dw).astype(w.dtype)
    if b is not None and db is not None:
        db = plan.psum_batch(db).astype(b.dtype)
    if cw is not None:
        # d w_y / d cw: scatter g_wy onto the owned labels (others dropped).
        hit = (y_local >= 0) & (y_local < v_local)
        idx = jnp.where(hit, y_local, v_local)
        d_wy = jnp.zeros((v_local,), cdt).at[idx].add(g_wy.astype(cdt), mode="drop")
        dcw = d_wy if dcw is None else dcw.astype(cdt) + d_wy
        dcw = plan.psum_batch(dcw).astype(cw.dtype)
    return dh, dw, db, dcw


def _stats_call(plan: _Plan, h, w, b, y, cw):
    row, mat_row, mat_vocab, b_spec, cw_spec = plan.specs(b, cw)
    fn = jax.shard_map(
        functools.partial(_local_stats, plan),
        mesh=plan.mesh,
        in_specs=(mat_row, mat_vocab, b_spec, row, cw_spec),
        out_specs=(row, row, row, row),
        check_vma=False,
    )
    return fn(h, w, b, y, cw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sharded_stats(plan: _Plan, h, w, b, y, cw):
    return _stats_call(plan, h, w, b, y, cw)


def _sharded_stats_fwd(plan: _Plan, h, w, b, y, cw):
    out = _stats_call(plan, h, w, b, y, cw)
    return out, (h, w, b, y, cw, out[0])


def _sharded_stats_bwd(plan: _Plan, res, cts):
    h, w, b, y, cw, lse = res
    row, mat_row, mat_vocab, b_spec, cw_spec = plan.specs(b, cw)
    fn = jax.shard_map(
        functools.partial(_local_grads, plan),
        mesh=plan.mesh,
        in_specs=(mat_row, mat_vocab, b_spec, row, cw_spec, row, row, row, row, row),
        out_specs=(mat_row, mat_vocab, b_spec, cw_spec),
        check_vma=False,
    )
    g = tuple(plan.place(x, row) for x in cts)
    dh, dw, db, dcw = fn(h, w, b, y, cw, lse, *g)
    return dh, dw, db, None, dcw


_sharded_stats.defvjp(_sharded_stats_fwd, _sharded_stats_bwd)


def _axis_size(mesh: Mesh, axis: AxisName, name: str) -> int:
    size = 1
    for a in _names(axis):
        if a not in mesh.shape:
            raise ValueError(
                f"`{name}`={axis!r} names an axis that is not in the mesh; its axes "
                f"are {tuple(mesh.axis_names)}."
            )
        size *= mesh.shape[a]
    return size


def sharded_linear_softmax_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias,
    class_weights,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    where,
    reduction,
    chunk_size,
    mesh: Mesh,
    batch_axis: AxisName,
    vocab_axis: AxisName,
) -> Array:
    r"""`jaxce.linear_softmax_cross_entropy` with a ``mesh`` (see the module doc).

    ``hidden`` / ``labels`` / ``where`` are split over ``batch_axis`` and
    ``weight`` / ``bias`` / ``class_weights`` over ``vocab_axis`` (either may be
    None: that dimension is then replicated). ``N`` must be divisible by the size
    of ``batch_axis`` and ``V`` by the size of ``vocab_axis``; ``chunk_size``
    applies to each device's vocabulary block. Works eagerly and under ``jit``,
    on meshes with ``Auto`` or ``Explicit`` axis types, with one JAX caveat:
    on an ``Explicit`` mesh (``jax.make_mesh``'s default), an *eager*
    ``jax.grad`` / ``jax.value_and_grad`` of this loss fails outside a mesh
    context ("Length of device assignment 1 is not equal to the size of the
    mesh"), as it does for any function of explicitly sharded arrays: run it
    inside ``with jax.set_mesh(mesh):`` or under ``jax.jit``. A present label
    outside ``[0, V)`` gives that token a NaN loss (see
    `jaxce.linear_softmax_cross_entropy`). Per token, with the
    all-reduced $\operatorname{lse}$, $z_y$, $w_y$ and $\sum_c w_c z_c$:

    $$L = (1 - \varepsilon)\, w_y (\operatorname{lse} - z_y)
        + \frac{\varepsilon}{V} \Big(\operatorname{lse} \sum_c w_c
        - \sum_c w_c z_c\Big) + \lambda\, \operatorname{lse}^2$$

    with $V$ the global vocabulary size.

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
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh)}.")
    nb = _axis_size(mesh, batch_axis, "batch_axis")
    nv = _axis_size(mesh, vocab_axis, "vocab_axis")
    shared = set(_names(batch_axis)) & set(_names(vocab_axis))
    if shared:
        raise ValueError(
            f"`batch_axis`={batch_axis!r} and `vocab_axis`={vocab_axis!r} share the "
            f"mesh axes {sorted(shared)}; use different axes."
        )
    p = prepare(
        hidden, weight, labels, bias=bias, class_weights=class_weights,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, where=where, reduction=reduction, chunk_size=chunk_size,
    )  # fmt: skip
    (n, _), v = p.hidden.shape, p.weight.shape[0]
    if n % nb:
        raise ValueError(
            f"`hidden` has {n} rows, not divisible by the {nb} devices of "
            f"`batch_axis`={batch_axis!r}; pad the batch (mark padding with `where`)."
        )
    if v % nv:
        raise ValueError(
            f"`weight` has {v} classes, not divisible by the {nv} devices of "
            f"`vocab_axis`={vocab_axis!r}; pad the vocabulary to a multiple."
        )
    c, t = default_chunks(n // nb, v // nv, chunk_size)
    plan = _Plan(mesh, batch_axis, vocab_axis, p.softcap, c, t, p.need_sum)
    row, mat_row, mat_vocab, b_spec, cw_spec = plan.specs(p.bias, p.class_weights)
    args = (
        plan.place(p.hidden, mat_row),
        plan.place(p.weight, mat_vocab),
        plan.place(p.bias, P(vocab_axis)),
        plan.place(p.labels, row),
        plan.place(p.class_weights, P(vocab_axis)),
    )
    stats = cast(tuple[Array, ...], _sharded_stats(plan, *args))
    lse, z_y, sum_wz, w_y = stats
    cw = p.class_weights
    # label smoothing's K is the GLOBAL vocabulary size v (Megatron #737)
    nll, w_y = token_losses(
        lse,
        z_y,
        sum_wz,
        plan.place(p.labels, row),
        cw,
        num_classes=v,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        invalid=plan.place(p.invalid, row),
        w_y=w_y,
    )
    return reduce_loss(
        nll,
        present=plan.place(p.present, row),
        weights=None,
        denom_weights=None if cw is None else w_y,
        reduction=reduction,
        base=None,
        out_dtype=p.hidden.dtype,
    )
