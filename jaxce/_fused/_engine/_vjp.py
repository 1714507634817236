"""The engine's entry points: the ``custom_vjp`` shapes of a fused head, on one
device or under the one ``shard_map``, with packing and padding.

- `stream`: a `Statistic` (``._walk``): the forward saves the statistic's
  residuals (O(N)), the backward recomputes each block;
- `rows_sum`: ``sum_n c_n L_n`` of a `RowLoss` (``._rows``): the gradients are
  formed in the forward pass (the coefficients ``c_n`` are an input whose
  gradient is ``L_n``, so autodiff reaches whatever they were made from) and
  the backward scales them; gradients not asked for are never formed;
- `rows_each`: the per-token losses of a `RowLoss`; the backward walks the
  chunks again with ``c_n`` its cotangent.

Every entry takes a `Layout` or None. On a mesh, ``hidden`` and the per-token
arrays are split over the batch axis and ``weight`` / ``bias`` / per-class
arrays over the vocabulary axis; sizes the axes do not divide are padded here
(padding tokens are absent, padding classes masked by ``limit``), inside the
differentiated function, and the results come back unpadded. ``compact=True``
packs the present tokens of each device to the front inside the walk (no token
moves between devices) and skips the blocks after them.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jax.sharding import PartitionSpec as P
from jaxtyping import Array

from ..._core import compute_dtype
from ._call import Call, Head
from ._device import (
    Static,
    Tokens,
    head_spec,
    local_view,
    masked,
    on_mesh,
    reduce_grads,
    run_on,
    static_of,
    unpad,
    walk_options,
)
from ._mesh import Layout
from ._rows import RowLoss, RowsOut, Want, row_pass
from ._walk import Statistic, walk_grads, walk_stats

# ---- a streamed statistic --------------------------------------------------


def _stream_local(stat: Statistic, st: Static, head: Head, classes, tokens: Tokens):
    loc = local_view(st, head, tokens)
    hd = head._replace(hidden=loc.pack(head.hidden))
    acc = walk_stats(
        stat, st.blocks, hd, classes, loc.pack(loc.labels), **walk_options(st, loc)
    )
    out, saved = loc.unpack(stat.finish(stat.combine(acc, loc.vocab)))
    return masked(out, tokens.present), saved


def _stream_grads_local(
    stat: Statistic, st: Static, head: Head, classes, tokens: Tokens, saved, cts
):
    loc = local_view(st, head, tokens)
    cdt = compute_dtype(head.hidden.dtype, head.weight.dtype)
    lay = st.lay
    # Summed over the batch axis: accumulate in the compute dtype, cast once.
    split = lay is not None and lay.size(lay.batch_axis) > 1
    g, dcls = walk_grads(
        stat, st.blocks, head._replace(hidden=loc.pack(head.hidden)), classes,
        loc.pack(loc.labels), loc.pack(saved), loc.pack(cts), **walk_options(st, loc),
        weight_grad_dtype=cdt if split else None,
    )  # fmt: skip
    g = g._replace(hidden=loc.unpack(g.hidden))
    if lay is not None:
        dcls = tuple(lay.psum_batch(x) for x in dcls)
    dcls = tuple(x.astype(c.dtype) for x, c in zip(dcls, classes))
    return reduce_grads(st, g, head, cdt), dcls


def _run_stream(stat: Statistic, st: Static, head: Head, classes, tokens: Tokens):
    lay = st.lay
    specs = None
    if lay is not None:
        specs = (head_spec(lay, head), (lay.vocab_spec(),) * len(classes), lay.row())
    fn = lambda s: functools.partial(_stream_local, stat, s)  # noqa: E731
    return run_on(
        fn, st, (head, classes, tokens), specs, None if lay is None else lay.row()
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _streamed(stat: Statistic, st: Static, head: Head, classes, tokens: Tokens):
    return _run_stream(stat, st, head, classes, tokens)[0]


def _streamed_fwd(stat, st, head, classes, tokens):
    out, saved = _run_stream(stat, st, head, classes, tokens)
    return out, (head, classes, tokens, saved)


def _float_ct(ct, present: Array, cdt):
    """A cotangent in the compute dtype, 0 where absent (integer outputs: 0)."""
    if ct is None or not jnp.issubdtype(ct.dtype, jnp.floating):
        return jnp.zeros(present.shape, cdt)
    return jnp.where(present, ct.astype(cdt), jnp.zeros((), cdt))


def _streamed_bwd(stat, st: Static, res, cts):
    head, classes, tokens, saved = res
    cdt = compute_dtype(head.hidden.dtype, head.weight.dtype)
    cts = jax.tree.map(lambda c: _float_ct(c, tokens.present, cdt), cts)
    lay = st.lay
    fn = lambda s: functools.partial(_stream_grads_local, stat, s)  # noqa: E731
    specs = out = None
    if lay is not None:
        hs, cs = head_spec(lay, head), (lay.vocab_spec(),) * len(classes)
        specs, out = (hs, cs, lay.row(), lay.row(), lay.row()), (hs, cs)
        place = functools.partial(lay.place, spec=lay.row())
        saved, cts = (jax.tree.map(place, t) for t in (saved, cts))
    g, dcls = run_on(fn, st, (head, classes, tokens, saved, cts), specs, out)
    return g, dcls, None


_streamed.defvjp(_streamed_fwd, _streamed_bwd)


def stream(
    stat: Statistic,
    call: Call,
    lay: Layout | None,
    head: Head,
    classes: tuple = (),
    tokens: Tokens | None = None,
) -> Any:
    """The outputs of ``stat`` per token (absent tokens 0), differentiable in
    ``head`` and the per-class arrays ``classes`` (recompute-in-backward)."""
    tokens = Tokens(call.labels, call.present) if tokens is None else tokens
    n = head.hidden.shape[0]
    if lay is None:
        return _streamed(stat, static_of(call, None, n, 1), head, classes, tokens)
    lay, (head,), classes, tokens = on_mesh(call, lay, (head,), classes, tokens)
    st = static_of(call, lay, n, 1)
    return unpad(lay, _streamed(stat, st, head, classes, tokens), n)


# ---- a row loss --------------------------------------------------------------


def _rows_local(
    loss: RowLoss, st: Static, want: Want, head, aux, params, tokens, coef
) -> RowsOut:
    loc = local_view(st, head, tokens)
    pk = loc.pack
    out = row_pass(
        loss, st.blocks, head._replace(hidden=pk(head.hidden)),
        tuple(a._replace(hidden=pk(a.hidden)) for a in aux), params,
        pk(loc.labels), pk(tokens.present), pk(tokens.extra), pk(coef), want,
        vocab=loc.vocab, **walk_options(st, loc),
    )  # fmt: skip
    lay, grads = st.lay, out.grads
    if grads is not None:
        grads = grads._replace(hidden=loc.unpack(grads.hidden))
        cdt = compute_dtype(head.hidden.dtype, head.weight.dtype)
        grads = reduce_grads(st, grads, head, cdt)
    d_params = out.d_params
    if lay is not None and d_params is not None:
        d_params = jax.tree.map(lay.psum_batch, d_params)
    return RowsOut(loc.unpack(out.loss), grads, d_params)


def _run_rows(loss, st: Static, want: Want, head, aux, params, tokens, coef):
    fn = lambda s: functools.partial(_rows_local, loss, s, want)  # noqa: E731
    lay = st.lay
    specs = out = None
    if lay is not None:
        hs = head_spec(lay, head)
        specs = (hs, tuple(head_spec(lay, a) for a in aux), P(), lay.row())
        specs += (None if coef is None else lay.row(),)
        grads = None
        if coef is not None and any(want):
            opt = lambda w, s: s if w else None  # noqa: E731
            b = opt(want.bias and head.bias is not None, hs.bias)
            grads = Head(opt(want.hidden, hs.hidden), opt(want.weight, hs.weight), b)
        dp = (
            P()
            if coef is not None and want.params and jax.tree.leaves(params)
            else None
        )
        out = RowsOut._make((lay.row(), grads, dp))
        if coef is not None:
            coef = lay.place(coef, lay.row())
    return run_on(fn, st, (head, aux, params, tokens, coef), specs, out)


def _value(tree, field: str):
    """``value`` / ``perturbed`` of each `CustomVJPPrimal` leaf (None kept)."""
    is_primal = lambda x: isinstance(x, CustomVJPPrimal)  # noqa: E731
    return jax.tree.map(lambda x: getattr(x, field), tree, is_leaf=is_primal)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rows_sum(loss: RowLoss, st: Static, head, aux, params, tokens, coef):
    out = _run_rows(loss, st, Want(), head, aux, params, tokens, None)
    return _summed(coef, out.loss)


def _summed(coef, per):
    """``sum_n c_n L_n``, and with a row loss's statistics ``(sum, stats)``."""
    if per.ndim == 1:
        return jnp.sum(coef * per)
    return jnp.sum(coef * per[:, 0]), per[:, 1:]


def _rows_sum_fwd(loss, st, head, aux, params, tokens, coef):
    hp, pp = _value(head, "perturbed"), _value(params, "perturbed")
    head, aux, params, tokens, coef = _value((head, aux, params, tokens, coef), "value")
    want = Want(
        bool(hp.hidden), bool(hp.weight), bool(hp.bias), any(jax.tree.leaves(pp))
    )
    out = _run_rows(loss, st, want, head, aux, params, tokens, coef)
    return _summed(coef, out.loss), (out, params)


def _rows_sum_bwd(loss, st, res, ct):
    out, params = res
    zeros_p = jax.tree.map(lambda _: None, params)
    per = out.loss
    if per.ndim == 2:  # statistics get no cotangent
        ct, per = ct[0], per[:, 0]
    if isinstance(ct, SymbolicZero):
        return Head(None, None, None), None, zeros_p, None, None
    scale = lambda x: None if x is None else ct.astype(x.dtype) * x  # noqa: E731
    grads = out.grads if out.grads is not None else Head(None, None, None)
    grads = Head(*(scale(x) for x in grads))
    dp = zeros_p if out.d_params is None else jax.tree.map(scale, out.d_params)
    return grads, None, dp, None, ct * per


_rows_sum.defvjp(_rows_sum_fwd, _rows_sum_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rows_each(loss: RowLoss, st: Static, head, aux, params, tokens):
    return _run_rows(loss, st, Want(), head, aux, params, tokens, None).loss


def _rows_each_fwd(loss, st, head, aux, params, tokens):
    out = _run_rows(loss, st, Want(), head, aux, params, tokens, None)
    return out.loss, (head, aux, params, tokens)


def _rows_each_bwd(loss, st, res, ct):
    head, aux, params, tokens = res
    out = _run_rows(loss, st, Want(), head, aux, params, tokens, ct)
    dp = out.d_params
    if dp is None:
        dp = jax.tree.map(jnp.zeros_like, params)
    return out.grads, None, dp, None


_rows_each.defvjp(_rows_each_fwd, _rows_each_bwd)


def rows(
    loss: RowLoss,
    call: Call,
    lay: Layout | None,
    head: Head,
    *,
    aux: tuple = (),
    params: Any = (),
    tokens: Tokens | None = None,
    coef: Array | None = None,
) -> Any:
    """``sum_n coef_n L_n`` (a scalar, the compute dtype) of the row loss, or,
    with ``coef`` None, the per-token losses ``(N,)`` (0 where absent). A row
    loss with ``stats`` (``coef`` given) returns ``(sum, (N, stats))``: its
    per-token statistics (0 where absent, not differentiated).

    Differentiable in ``head``, ``params`` and ``coef``; the auxiliary heads
    ``aux`` (a teacher) share the block budget and get no gradient. ``params``
    (replicated, e.g. class weights) are not supported on a mesh.
    """
    tokens = Tokens(call.labels, call.present) if tokens is None else tokens
    n, count = head.hidden.shape[0], (1 + len(aux)) * loss.blocks
    if lay is not None:
        if jax.tree.leaves(params):
            raise NotImplementedError("row-loss parameters on a mesh")
        lay, placed, _, (tokens, coef) = on_mesh(
            call, lay, (head, *aux), (), (tokens, coef)
        )
        head, aux = placed[0], placed[1:]
    st = static_of(call, lay, n, count)
    if coef is None:
        out = cast(Array, _rows_each(loss, st, head, aux, params, tokens))
        return out if lay is None else unpad(lay, out, n)
    out: Any = _rows_sum(loss, st, head, aux, params, tokens, coef)
    if loss.stats and lay is not None:
        out = (out[0], unpad(lay, out[1], n))
    return out
