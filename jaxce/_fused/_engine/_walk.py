"""The vocabulary walk: a per-token `Statistic` streamed over vocabulary blocks.

Forward (`walk_stats`): for each token block, the vocabulary is walked block by
block and the statistic's online accumulators are updated from each
``(T, C)`` logits block; nothing of size ``N x V`` exists. Backward
(`walk_grads`): each block is recomputed and the statistic turns the per-token
cotangents of its outputs into the block's logits cotangent ``dz``, from which
``dH += dz @ W_block``, ``dW_block += dz^T H`` and ``db_block += sum_n dz``
(four matmuls in all with the forward, as Cut Cross Entropy).

A family writes only its `Statistic`: ``init`` / ``update`` (one block) /
``combine`` (across vocabulary shards) / ``finish`` / ``cotangent``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._core import compute_dtype
from ._call import Head
from ._kernels import (
    add_slice,
    class_axis,
    hidden_grad,
    logits_block,
    num_classes,
    owned_columns,
    softcap_grad,
    token_blocks,
    vocab_blocks,
    weight_grad,
    weight_slice,
)
from ._mesh import Vocab
from ._plan import Blocks


class Block(NamedTuple):
    """Where one logits block sits.

    ``cols`` (``(C,)``) its class indices in the walked slice, ``valid`` those
    it owns that are real classes, ``labels`` (``(T,)``) its tokens' labels
    (local to the slice: a label outside it matches no column), ``classes`` the
    statistic's per-class arrays sliced to the block, ``tokens`` the per-token
    arrays sliced to the block.
    """

    cols: Array
    valid: Array
    labels: Array
    classes: tuple = ()
    tokens: tuple = ()

    def _label_column(self) -> tuple[Array, Array]:
        """Each token's label as a column of the block, and whether the block
        owns it (the label is in the block and that column is valid)."""
        hit = (self.labels >= self.cols[0]) & (self.labels <= self.cols[-1])
        idx = jnp.clip(self.labels - self.cols[0], 0, self.cols.shape[0] - 1)
        return idx, hit & self.valid[idx]

    def at_label(self, x: Array, zero) -> Array:
        """``x[n, labels_n]`` of a ``(T, C)`` block (``zero`` if not in it)."""
        idx, ok = self._label_column()
        return jnp.where(ok, jnp.take_along_axis(x, idx[:, None], axis=1)[:, 0], zero)

    def class_at_label(self, x: Array, zero) -> Array:
        """``x[labels_n]`` of a ``(C,)`` per-class block (``zero`` if not in it)."""
        idx, ok = self._label_column()
        return jnp.where(ok, x[idx], zero)

    def is_label(self) -> Array:
        """``(T, C)``: column ``c`` is token ``n``'s label (and owned)."""
        return (self.cols[None, :] == self.labels[:, None]) & self.valid[None, :]


class Statistic:
    """A per-token statistic streamed over vocabulary blocks (subclass a frozen
    dataclass: it is a ``custom_vjp`` nondiff argument).

    Accumulators, outputs and residuals are pytrees of ``(N,)`` arrays.
    """

    def init(self, n: int, cdt) -> Any:
        """The accumulators of ``n`` tokens before any class."""
        raise NotImplementedError

    def update(self, acc: Any, z: Array, blk: Block) -> Any:
        """The accumulators after the ``(T, C)`` logits block ``z``; columns
        not ``blk.valid`` must not count."""
        raise NotImplementedError

    def combine(self, acc: Any, vocab: Vocab) -> Any:
        """The accumulators of the whole vocabulary from each shard's."""
        return acc

    def finish(self, acc: Any) -> tuple[Any, Any]:
        """``(outputs, residuals)`` per token from the whole vocabulary's."""
        raise NotImplementedError

    def cotangent(
        self, z: Array, blk: Block, saved: Any, cts: Any
    ) -> tuple[Array, tuple]:
        """``(dz, d_classes)`` of a recomputed block, from the residuals and
        the outputs' cotangents (0 for rows that do not count); ``d_classes``
        like ``blk.classes`` (an entry may be None)."""
        raise NotImplementedError


def _slices(x: Array, start, size: int, axis: int = 0):
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def walk_stats(
    stat: Statistic,
    blocks: Blocks,
    head: Head,
    classes: tuple,
    labels: Array,
    *,
    weight_layout: str,
    softcap,
    count=None,
    limit=None,
) -> Any:
    """The accumulators of every token over the vocabulary slice of ``head``.

    ``limit`` (None: all) is the number of real classes of the slice: the
    columns after it (padding) are not valid. ``count`` (``compact=True``): only
    the token blocks holding one of the first ``count`` tokens run; the other
    rows keep ``stat.init``.
    """
    hidden, weight, bias = head
    n, v = hidden.shape[0], num_classes(weight, weight_layout)
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    c, t = blocks.chunk_size, blocks.token_chunk

    def block(outs, t_start, t_lo):
        h, lab = _slices(hidden, t_start, t), _slices(labels, t_start, t)

        def step(acc, start, lo):
            w = weight_slice(weight, start, c, weight_layout)
            b = None if bias is None else _slices(bias, start, c)
            z = logits_block(h, w, b, softcap, cdt, weight_layout)
            cols = start + jnp.arange(c)
            cls = tuple(_slices(x, start, c) for x in classes)
            blk = Block(cols, owned_columns(cols, lo, limit), lab, cls)
            return stat.update(acc, z, blk)

        acc = vocab_blocks(v, c, step, stat.init(t, cdt))
        put = lambda o, x: lax.dynamic_update_slice_in_dim(o, x, t_start, 0)  # noqa: E731
        return jax.tree.map(put, outs, acc)

    return token_blocks(n, t, block, stat.init(n, cdt), count)


def walk_grads(
    stat: Statistic,
    blocks: Blocks,
    head: Head,
    classes: tuple,
    labels: Array,
    saved: Any,
    cts: Any,
    *,
    weight_layout: str,
    softcap,
    count=None,
    limit=None,
    weight_grad_dtype=None,
) -> tuple[Head, tuple]:
    """``(d_head, d_classes)`` of the slice, given per-token cotangents ``cts``
    (already 0 for tokens that do not count).

    ``dz`` is cast to the input dtype before its two matmuls (as the unfused
    bf16 backward does); ``d_hidden``, ``d_bias`` and ``d_classes`` come back in
    the compute dtype, ``d_weight`` in ``weight_grad_dtype`` (default: the
    weight's dtype).
    """
    hidden, weight, bias = head
    n, d = hidden.shape
    v, ax = num_classes(weight, weight_layout), class_axis(weight_layout)
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    in_dt = jnp.result_type(hidden, weight)
    c, t = blocks.chunk_size, blocks.token_chunk
    zero = jnp.zeros((), cdt)

    def step(carry, start, lo):
        dh, dw, db, dcls = carry
        w = weight_slice(weight, start, c, weight_layout)
        b = None if bias is None else _slices(bias, start, c)
        cols = start + jnp.arange(c)
        valid = owned_columns(cols, lo, limit)
        cls = tuple(_slices(x, start, c) for x in classes)

        def block(acc, t_start, t_lo):
            dh, dwj, dbj, dcj = acc
            sl = lambda x: _slices(x, t_start, t)  # noqa: E731
            h = sl(hidden)
            rows = (t_start + jnp.arange(t)) >= t_lo
            own = lambda x: jnp.where(rows, x, jnp.zeros((), x.dtype))  # noqa: E731
            blk = Block(cols, valid, sl(labels), cls)
            z = logits_block(h, w, b, softcap, cdt, weight_layout)
            g = jax.tree.map(lambda x: own(sl(x)), cts)
            dz, dc = stat.cotangent(z, blk, jax.tree.map(sl, saved), g)
            dz = softcap_grad(dz, z, softcap)
            dz = jnp.where(rows[:, None] & valid[None, :], dz, zero)
            dzc = dz.astype(in_dt)
            blk_dh = hidden_grad(dzc, w, weight_layout, cdt)
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + blk_dh, t_start, 0)
            dwj = dwj + weight_grad(dzc, h, weight_layout, cdt)
            dbj = None if dbj is None else dbj + jnp.sum(dz, axis=0)
            dcj = tuple(a if a is None or x is None else a + x for a, x in zip(dcj, dc))
            return dh, dwj, dbj, dcj

        acc = (
            dh,
            jnp.zeros((c, d) if ax == 0 else (d, c), cdt),
            None if db is None else jnp.zeros((c,), cdt),
            tuple(jnp.zeros((c,), cdt) for _ in classes),
        )
        dh, dwj, dbj, dcj = token_blocks(n, t, block, acc, count)
        dw = add_slice(dw, dwj, start, ax)
        db = None if db is None or dbj is None else add_slice(db, dbj, start)
        dcls = tuple(add_slice(a, cast(Array, x), start) for a, x in zip(dcls, dcj))
        return dh, dw, db, dcls

    init = (
        jnp.zeros((n, d), cdt),
        jnp.zeros(weight.shape, weight_grad_dtype or weight.dtype),
        None if bias is None else jnp.zeros((v,), cdt),
        tuple(jnp.zeros((v,), cdt) for _ in classes),
    )
    dh, dw, db, dcls = vocab_blocks(v, c, step, init)
    return Head(dh, dw, db), dcls
