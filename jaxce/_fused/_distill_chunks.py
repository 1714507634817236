r"""Fused linear -> distillation loss: student and teacher logits by token chunk.

Both models' logits are formed together, ``T`` tokens at a time, over the full
vocabulary (``T`` from `block_sizes`, the one element budget of `_block_sizes`
shared by the two ``(T, V)`` blocks: each is at most half of it), never
``(N, V)`` at once. Per chunk the per-token divergence and its analytic
gradient w.r.t. the student logits (`jaxce._distillation.divergence_parts`,
`divergence_grad`) give

    dz = coef_n * grad / tau,   dH[chunk] = dz @ W_s,   dW_s += dz.T @ H[chunk],
    db_s += sum_n dz

(``dW_s`` in ``chunk_size``-class slices). Two ``jax.custom_vjp``:

- scalar reductions (`scalar_distill`): the reduction's coefficients ``c_n``
  are known before the loop, so the gradients are computed in the forward
  (Liger-style) and the backward scales them by the cotangent. ``c_n`` is an
  input whose gradient is ``L_n``, so autodiff reaches ``weights`` and
  ``normalizer`` through `Reducer.coefficients`;
- ``reduction="none"`` (`token_distill`): the forward saves only the inputs and
  the backward walks the chunks again with ``coef_n`` = the cotangent.

The teacher gets no gradient. Memory: two logits blocks and their
elementwise temporaries, the student's gradient accumulators and O(N) vectors.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jax.sharding import PartitionSpec as P
from jaxtyping import Array

from .._core import compute_dtype
from .._distillation import Divergence, divergence_grad, divergence_parts
from ._blocks import logits_block, token_blocks
from ._mesh import Layout
from ._token_grads import add_weight_grad


@dataclasses.dataclass(frozen=True)
class DistillStatic:
    """Hashable static configuration of one call (a custom_vjp nondiff arg)."""

    div: Divergence
    token_chunk: int  # tokens per full-vocabulary chunk
    chunk_size: int  # classes per slice of the dW update
    lay: Layout | None = None  # the mesh (vocabulary-parallel), None: one device


class Model(NamedTuple):
    """One model's last layer: ``(N, D)`` hidden, ``(V, D)`` weight, ``(V,)`` bias."""

    hidden: Array
    weight: Array
    bias: Array | None


class Want(NamedTuple):
    """Which student gradients `distill_chunks` forms."""

    d_hidden: bool = False
    d_weight: bool = False
    d_bias: bool = False


class Out(NamedTuple):
    """Per-token losses ``(N,)`` (0 where absent) and the student's gradients of
    ``sum_n coef_n L_n`` (None when not wanted), all in the compute dtype."""

    loss: Array
    d_hidden: Array | None
    d_weight: Array | None
    d_bias: Array | None


def _log_softmax(z: Array, lay: Layout | None, limit) -> Array:
    """``log_softmax`` over the classes; with ``lay``, over every device's block.

    Columns at or after ``limit`` (padding) are ``-inf``: out of the softmax.
    """
    if limit is not None:
        z = jnp.where((jnp.arange(z.shape[-1]) < limit)[None, :], z, -jnp.inf)
    if lay is None or lay.size(lay.vocab_axis) == 1:
        return jax.nn.log_softmax(z, axis=-1)
    _, m = lay.max_vocab(jnp.max(z, axis=-1))
    s = lax.psum(jnp.sum(jnp.exp(z - m[:, None]), axis=-1), lay.vocab_axis)
    return z - (m + jnp.log(s))[:, None]


def distill_chunks(
    st: DistillStatic,
    student: Model,
    teacher: Model,
    coef: Array | None,
    present: Array,
    want: Want = Want(),
) -> Out:
    """Losses and (with ``coef``) gradients of ``sum_n coef_n L_n``, by token chunk.

    With ``st.lay`` (called inside ``shard_map`` by `run_chunks`) the weights
    are this device's vocabulary block: the log-softmaxes and the row sums of
    the divergence are all-reduced over the vocabulary axis per chunk, and the
    gradients are this device's partial ones (`run_chunks` all-reduces them).
    """
    lay = st.lay
    limit = None if lay is None else lay.real_classes(student.weight.shape[0])
    hs, ws, bs = student
    ht, wt, bt = teacher
    n, d = hs.shape
    v = ws.shape[0]
    cdt = compute_dtype(hs.dtype, ws.dtype, ht.dtype, wt.dtype)
    in_dt = hs.dtype
    t, c = st.token_chunk, max(1, min(st.chunk_size, v))
    zero = jnp.zeros((), cdt)
    inv_tau = 1.0 / st.div.temperature
    grads = coef is not None and any(want)

    def chunk(carry, t_start, t_lo):
        loss, dh, dw, db = carry
        sl = lambda x: lax.dynamic_slice_in_dim(x, t_start, t, 0)  # noqa: E731
        h = sl(hs)
        own = (t_start + jnp.arange(t)) >= t_lo  # rows not done by an earlier chunk
        keep = own & sl(present)
        zs = jnp.where(keep[:, None], logits_block(h, ws, bs, None, cdt), zero)
        zt = jnp.where(keep[:, None], logits_block(sl(ht), wt, bt, None, cdt), zero)
        if st.div.temperature != 1.0:
            zs, zt = zs * inv_tau, zt * inv_tau
        log_s, log_t = _log_softmax(zs, lay, limit), _log_softmax(zt, lay, limit)
        per, kl_s = divergence_parts(log_s, log_t, st.div)
        if lay is not None:  # row sums over the vocabulary blocks
            per, kl_s = jax.tree.map(lay.psum_vocab, (per, kl_s))
        per = jnp.where(keep, per, zero)
        loss = lax.dynamic_update_slice_in_dim(
            loss, jnp.where(own, per, sl(loss)), t_start, 0
        )
        if not grads:
            return loss, dh, dw, db
        assert coef is not None
        k = jnp.where(keep, sl(coef).astype(cdt), zero) * inv_tau
        g = divergence_grad(log_s, log_t, kl_s, st.div)
        dz = jnp.where(keep[:, None], k[:, None] * g, zero)
        dzc = dz.astype(in_dt)
        if dh is not None:
            dims = (((1,), (0,)), ((), ()))
            blk = lax.dot_general(dzc, ws, dims, preferred_element_type=cdt)
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + blk, t_start, 0)
        if dw is not None:
            dw = add_weight_grad(dw, dzc, h, c, cdt)
        if db is not None:
            db = db + jnp.sum(dz, axis=0)
        return loss, dh, dw, db

    init = (
        jnp.zeros((n,), cdt),
        jnp.zeros((n, d), cdt) if grads and want.d_hidden else None,
        jnp.zeros((v, d), cdt) if grads and want.d_weight else None,
        jnp.zeros((v,), cdt) if grads and want.d_bias and bs is not None else None,
    )
    return Out(*token_blocks(n, t, chunk, init))


def run_chunks(
    st: DistillStatic,
    student: Model,
    teacher: Model,
    coef: Array | None,
    present: Array,
    want: Want = Want(),
) -> Out:
    """`distill_chunks` on one device, or under ``shard_map`` on ``st.lay``.

    Sharded: the rows of ``hidden`` / ``coef`` / ``present`` over the batch axis,
    the rows of both weights (and biases) over the vocabulary axis; the
    per-token losses come back split over the batch axis, ``d_hidden``
    all-reduced over the vocabulary axis and ``d_weight`` / ``d_bias`` over the
    batch axis (split like the student's weight). Nothing of the size of a
    weight or of the logits is gathered.
    """
    lay = st.lay
    if lay is None:
        return distill_chunks(st, student, teacher, coef, present, want)
    row, vocab = lay.row(), P(lay.vocab_axis)
    rows2, vocab2 = lay.hidden_spec(), lay.weight_spec()  # weights (V, D)

    def model_spec(m: Model) -> Model:
        return Model._make((rows2, vocab2, None if m.bias is None else vocab))

    grads = coef is not None and any(want)
    out_specs = Out._make((
        row,
        rows2 if grads and want.d_hidden else None,
        vocab2 if grads and want.d_weight else None,
        vocab if grads and want.d_bias and student.bias is not None else None,
    ))  # fmt: skip

    def local(student, teacher, present, *coef):
        c = coef[0] if coef else None
        out = distill_chunks(st, student, teacher, c, present, want)
        opt = lambda x, f: None if x is None else f(x)  # noqa: E731
        return Out(
            out.loss,
            opt(out.d_hidden, lay.psum_vocab),
            opt(out.d_weight, lay.psum_batch),
            opt(out.d_bias, lay.psum_batch),
        )

    extra = () if coef is None else (lay.place(coef, row),)
    fn = jax.shard_map(
        local,
        mesh=lay.mesh,
        in_specs=(model_spec(student), model_spec(teacher), row) + (row,) * len(extra),
        out_specs=out_specs,
        check_vma=False,
    )
    return fn(student, teacher, present, *extra)


def _cast(x: Array | None, ref: Array | None) -> Array | None:
    return None if x is None or ref is None else x.astype(ref.dtype)


def _unwrap(tree, field: str):
    """``value`` / ``perturbed`` of each `CustomVJPPrimal` leaf (None kept)."""
    is_primal = lambda x: isinstance(x, CustomVJPPrimal)  # noqa: E731
    return jax.tree.map(lambda x: getattr(x, field), tree, is_leaf=is_primal)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def scalar_distill(
    st: DistillStatic, student: Model, teacher: Model, coef: Array, present: Array
) -> Array:
    """``sum_n coef_n L_n`` in the compute dtype; no gradient work undifferentiated."""
    return jnp.sum(coef * run_chunks(st, student, teacher, None, present).loss)


def _scalar_fwd(st: DistillStatic, student, teacher, coef, present):
    perturbed = cast(Model, _unwrap(student, "perturbed"))
    student = cast(Model, _unwrap(student, "value"))
    teacher = cast(Model, _unwrap(teacher, "value"))
    coef, present = coef.value, present.value
    want = Want(*(bool(p) for p in perturbed))
    out = run_chunks(st, student, teacher, coef, present, want)
    grads = Model(
        cast(Array, _cast(out.d_hidden, student.hidden)),
        cast(Array, _cast(out.d_weight, student.weight)),
        _cast(out.d_bias, student.bias),
    )
    return jnp.sum(coef * out.loss), (grads, out.loss)


def _scalar_bwd(st: DistillStatic, res, ct):
    if isinstance(ct, SymbolicZero):
        return Model._make((None,) * 3), None, None, None
    grads, loss = res
    scaled = jax.tree.map(lambda r: ct.astype(r.dtype) * r, grads)
    return scaled, None, ct * loss, None


scalar_distill.defvjp(_scalar_fwd, _scalar_bwd, symbolic_zeros=True)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def token_distill(
    st: DistillStatic, student: Model, teacher: Model, present: Array
) -> Array:
    """Per-token losses ``(N,)`` (0 where absent); the backward recomputes."""
    return run_chunks(st, student, teacher, None, present).loss


def _token_fwd(st: DistillStatic, student, teacher, present):
    out = run_chunks(st, student, teacher, None, present)
    return out.loss, (student, teacher, present)


def _token_bwd(st: DistillStatic, res, ct):
    student, teacher, present = res
    want = Want(True, True, student.bias is not None)
    out = run_chunks(st, student, teacher, ct, present, want)
    grads = Model(
        cast(Array, _cast(out.d_hidden, student.hidden)),
        cast(Array, _cast(out.d_weight, student.weight)),
        _cast(out.d_bias, student.bias),
    )
    return grads, None, None


token_distill.defvjp(_token_fwd, _token_bwd)
