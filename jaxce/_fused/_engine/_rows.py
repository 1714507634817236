"""The row pass: a per-token `RowLoss` on full-vocabulary logits rows, with its
gradient formed in the forward.

Tokens are walked in chunks of ``T`` (`Blocks.row_chunk`); each chunk forms its
``(T, V)`` logits rows (and those of any auxiliary head: a teacher), the
family's per-token losses ``L_n`` and, given the coefficients ``c_n``, the
cotangent of the logits ``dz = c_n dL_n / dz`` (autodiff of the chunk by
default; a family may write it out), then ``dH[chunk] = dz @ W`` and
``dW += dz^T H[chunk]`` (in ``chunk_size``-class slices): three matmuls in all,
the unfused count. On a vocabulary shard the rows are the shard's columns and
the family reduces its rows over the shards through `Vocab`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._core import compute_dtype
from ._call import Head
from ._kernels import (
    add_weight_grad,
    hidden_grad,
    logits_block,
    num_classes,
    softcap_grad,
    token_blocks,
)
from ._mesh import Vocab
from ._plan import Blocks
from ._walk import Block


class Want(NamedTuple):
    """Which gradients the row pass forms (the rest are never computed)."""

    hidden: bool = True
    weight: bool = True
    bias: bool = True
    params: bool = True


class RowLoss:
    """A per-token loss of full-vocabulary logits rows (subclass a frozen
    dataclass: it is a ``custom_vjp`` nondiff argument).

    ``stats > 0``: `value` returns ``(T, 1 + stats)``, the loss in column 0 and
    per-token statistics (never differentiated) in the others, which `rows`
    returns with the loss at no extra matmul (a policy loss's ratios).
    ``blocks``: how many logits blocks' share of the budget one head's rows
    take (a formula differentiated by autodiff keeps more arrays alive).
    """

    stats = 0
    blocks = 1

    def value(
        self, z: Array, aux: tuple, blk: Block, params: Any, vocab: Vocab
    ) -> Array:
        """Per-token losses ``(T,)`` of the ``(T, C)`` rows ``z`` (columns not
        ``blk.valid`` are ``-inf``) and the auxiliary heads' rows ``aux``."""
        raise NotImplementedError

    def value_and_grad(
        self,
        z: Array,
        aux: tuple,
        blk: Block,
        params: Any,
        vocab: Vocab,
        coef: Array,
        want_params: bool,
    ) -> tuple[Array, Array, Any]:
        """``(L, dz, d_params)`` of ``sum_n coef_n L_n``: autodiff of `value`
        (override with a closed form; ``d_params`` may be None unless
        ``want_params``)."""
        if not want_params:
            loss, vjp = jax.vjp(lambda z: self.value(z, aux, blk, params, vocab), z)
            return loss, vjp(_loss_ct(coef, loss))[0], None
        loss, vjp = jax.vjp(lambda z, p: self.value(z, aux, blk, p, vocab), z, params)
        dz, dp = vjp(_loss_ct(coef, loss))
        return loss, dz, dp


def _loss_ct(coef: Array, loss: Array) -> Array:
    """The cotangent ``coef`` of the loss column (statistics columns: 0)."""
    coef = coef.astype(loss.dtype)
    if loss.ndim == 1:
        return coef
    return jnp.zeros_like(loss).at[:, 0].set(coef)


class RowsOut(NamedTuple):
    """Per-token losses (0 where absent; ``(N, 1 + stats)`` with the row
    loss's statistics), the head's gradients of
    ``sum_n c_n L_n`` (entries None when not wanted) and the parameters'."""

    loss: Array
    grads: Head | None
    d_params: Any


def row_pass(
    loss_fn: RowLoss,
    blocks: Blocks,
    head: Head,
    aux: tuple,
    params: Any,
    labels: Array,
    present: Array,
    tokens: tuple,
    coef: Array | None,
    want: Want,
    *,
    weight_layout: str,
    softcap,
    vocab: Vocab,
    count=None,
    limit=None,
) -> RowsOut:
    """Losses and (with ``coef``) gradients, one token chunk at a time.

    Rows of absent tokens are zeros (their loss is 0 and gets no gradient);
    ``limit`` (padding of a vocabulary shard) makes the columns after it
    ``-inf``. Auxiliary heads (``aux``, `Head` s) are never differentiated.
    """
    hidden, weight, bias = head
    n, d = hidden.shape
    v = num_classes(weight, weight_layout)
    cdt = compute_dtype(hidden.dtype, weight.dtype, *(a.hidden.dtype for a in aux))
    in_dt = jnp.result_type(hidden, weight)
    t, c = blocks.row_chunk, max(1, min(blocks.chunk_size, v))
    zero = jnp.zeros((), cdt)
    cols = jnp.arange(v)
    valid = cols >= 0 if limit is None else cols < limit
    grads = coef is not None and any(want)

    def logits(hd: Head, h: Array, keep: Array) -> Array:
        z = logits_block(h, hd.weight, hd.bias, softcap, cdt, weight_layout)
        z = jnp.where(keep[:, None], z, zero)
        return z if limit is None else jnp.where(valid[None, :], z, -jnp.inf)

    def chunk(carry, t_start, t_lo):
        out, dh, dw, db, dp = carry
        sl = lambda x: lax.dynamic_slice_in_dim(x, t_start, t, 0)  # noqa: E731
        h = sl(hidden)
        own = (t_start + jnp.arange(t)) >= t_lo  # rows not done by an earlier chunk
        keep = own & sl(present)
        z = logits(head, h, keep)
        zs = tuple(logits(a, sl(a.hidden), keep) for a in aux)
        blk = Block(cols, valid, sl(labels), (), tuple(sl(x) for x in tokens))
        dz = dpj = None
        if grads:
            assert coef is not None
            k = jnp.where(keep, sl(coef).astype(cdt), zero)
            per, dz, dpj = loss_fn.value_and_grad(
                z, zs, blk, params, vocab, k, want.params
            )
        else:
            per = loss_fn.value(z, zs, blk, params, vocab)
        per = jnp.where(keep if per.ndim == 1 else keep[:, None], per.astype(cdt), zero)
        put = jnp.where(own if per.ndim == 1 else own[:, None], per, sl(out))
        out = lax.dynamic_update_slice_in_dim(out, put, t_start, 0)
        if dz is None:
            return out, dh, dw, db, dp
        dz = softcap_grad(dz, z, softcap)
        dz = jnp.where(keep[:, None] & valid[None, :], dz, zero)
        dzc = dz.astype(in_dt)
        if dh is not None:
            blk_dh = hidden_grad(dzc, weight, weight_layout, cdt)
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + blk_dh, t_start, 0)
        if dw is not None:
            dw = add_weight_grad(dw, dzc, h, c, cdt, weight_layout)
        if db is not None:
            db = db + jnp.sum(dz, axis=0)
        if dp is not None:
            dp = jax.tree.map(jnp.add, dp, dpj)
        return out, dh, dw, db, dp

    want_p = grads and want.params and bool(jax.tree.leaves(params))
    k = loss_fn.stats
    init = (
        jnp.zeros((n,) if k == 0 else (n, 1 + k), cdt),
        jnp.zeros((n, d), cdt) if grads and want.hidden else None,
        jnp.zeros(weight.shape, cdt) if grads and want.weight else None,
        jnp.zeros((v,), cdt) if grads and want.bias and bias is not None else None,
        jax.tree.map(jnp.zeros_like, params) if want_p else None,
    )
    out, dh, dw, db, dp = token_blocks(n, t, chunk, init, count)
    return RowsOut(out, Head(dh, dw, db) if grads else None, dp)  # type: ignore[arg-type]
