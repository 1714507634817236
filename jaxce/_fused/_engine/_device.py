"""A walk's view of its device, and the placement of a call on a mesh.

`Static` is the hashable configuration of one walk; `local_view` gives a walk
its block-local labels, padding ``limit``, vocabulary collectives and (with
``compact=True``) the packing of its present tokens; `on_mesh` pads a call's
arrays to the mesh and places them; `run_on` runs a local function on one
device or under the mesh's ``shard_map``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._call import Call, Head
from ._kernels import class_axis, num_classes
from ._mesh import Layout, Vocab, pad_rows
from ._plan import PLATFORMS, Blocks


@dataclasses.dataclass(frozen=True)
class Static:
    """Hashable configuration of one walk (a ``custom_vjp`` nondiff argument)."""

    blocks: Blocks  # the CPU's plan (and every platform's without `plans`)
    weight_layout: str
    softcap: float | None
    lay: Layout | None
    compact: bool
    plans: tuple = ()  # ((platform, Blocks), ...): the plans that differ

    def dispatch(self, fn: Callable, *args):
        """``fn(static, *args)`` with the plan of the platform the module is
        lowered for (`jax.lax.platform_dependent`; one branch when every
        platform has the same plan)."""
        if not self.plans:
            return fn(self, *args)
        one = lambda b: functools.partial(  # noqa: E731
            fn, dataclasses.replace(self, blocks=b, plans=())
        )
        branches = {p: one(b) for p, b in self.plans}
        return jax.lax.platform_dependent(*args, default=one(self.blocks), **branches)


class Tokens(NamedTuple):
    """Per-token inputs that are never differentiated."""

    labels: Array  # (N,) int, safe to index with
    present: Array  # (N,) bool
    extra: tuple = ()  # a family's other per-token arrays


def run_on(local: Callable, st: Static, args: tuple, in_specs, out_specs):
    """``local(static)(*args)`` on one device or under the mesh's ``shard_map``,
    with the plan of the platform the module is lowered for."""

    def one(s: Static, *a):
        fn = local(s)
        return fn(*a) if s.lay is None else s.lay.run(fn, a, in_specs, out_specs)

    return st.dispatch(one, *args)


def head_spec(lay: Layout, head: Head) -> Head:
    bias = None if head.bias is None else lay.vocab_spec()
    return Head(lay.hidden_spec(), lay.weight_spec(), bias)


class Local(NamedTuple):
    """A walk's view of its device: block-local labels, padding ``limit``,
    the vocabulary collectives and the packing of ``compact=True``."""

    labels: Array
    limit: Any
    vocab: Vocab
    order: Array | None
    num_present: Array | None

    def pack(self, tree):
        order = self.order
        return tree if order is None else jax.tree.map(lambda x: x[order], tree)

    def unpack(self, tree):
        order = self.order
        if order is None:
            return tree
        put = lambda x: jnp.zeros_like(x).at[order].set(x, unique_indices=True)  # noqa: E731
        return jax.tree.map(put, tree)


def local_view(st: Static, head: Head, tokens: Tokens) -> Local:
    lay, v = st.lay, num_classes(head.weight, st.weight_layout)
    labels, limit, vocab = tokens.labels, None, Vocab()
    if lay is not None:
        labels = lay.localise(labels, v)
        limit = lay.real_classes(v)
        vocab = Vocab(lay, lay.vocab_offset(v))
    order = count = None
    if st.compact:  # present tokens first, each group in its order
        order = jnp.argsort((~tokens.present).astype(jnp.int8), stable=True)
        count = jnp.sum(tokens.present, dtype=jnp.int32)
    return Local(labels, limit, vocab, order, count)


def walk_options(st: Static, loc: Local) -> dict:
    return dict(
        weight_layout=st.weight_layout, softcap=st.softcap, count=loc.num_present,
        limit=loc.limit,
    )  # fmt: skip


def masked(tree, present: Array):
    return jax.tree.map(lambda x: jnp.where(present, x, jnp.zeros((), x.dtype)), tree)


def reduce_grads(st: Static, grads: Head, head: Head, cdt) -> Head:
    """All-reduce a device's gradients to the input shardings; input dtypes."""
    lay = st.lay
    dh, dw, db = grads
    if lay is not None:
        dh = None if dh is None else lay.psum_vocab(dh)
        dw = None if dw is None else lay.psum_batch(dw)
        db = None if db is None else lay.psum_batch(db)
    cast_to = lambda x, r: None if x is None or r is None else x.astype(r.dtype)  # noqa: E731
    return Head(
        cast_to(dh, head.hidden), cast_to(dw, head.weight), cast_to(db, head.bias)
    )


def static_of(call: Call, lay: Layout | None, n: int, heads: int) -> Static:
    """The walk's configuration, with a plan for each platform (`PLATFORMS`)."""
    v = call.num_classes
    if lay is not None:  # one device's rows and classes
        n_pad, v_pad = lay.padded(n, v)[1:]
        n, v = n_pad // lay.size(lay.batch_axis), v_pad // lay.size(lay.vocab_axis)
    cpu = call.plan(n, v, heads)
    others = tuple((p, call.plan(n, v, heads, p)) for p in PLATFORMS if p != "cpu")
    plans = tuple((p, b) for p, b in others if b != cpu)
    return Static(cpu, call.weight_layout, call.softcap, lay, call.compact, plans)


def on_mesh(call: Call, lay: Layout, heads: tuple, classes, rows):
    """The arrays padded to the mesh and placed on it, and the padded layout."""
    lay = dataclasses.replace(lay, weight_layout=call.weight_layout)
    n = heads[0].hidden.shape[0]
    lay, n_pad, v_pad = lay.padded(n, call.num_classes)
    ax = class_axis(call.weight_layout)

    def put(hd: Head) -> Head:
        h = lay.place(pad_rows(hd.hidden, n_pad), lay.hidden_spec())
        w = lay.place(pad_rows(hd.weight, v_pad, ax), lay.weight_spec())
        b = None if hd.bias is None else pad_rows(hd.bias, v_pad)
        return Head(h, w, lay.place(b, lay.vocab_spec()))

    classes = tuple(lay.place(pad_rows(x, v_pad), lay.vocab_spec()) for x in classes)
    rows = jax.tree.map(lambda x: lay.place(pad_rows(x, n_pad), lay.row()), rows)
    return lay, tuple(put(h) for h in heads), classes, rows


def unpad(lay: Layout, tree, n: int):
    return jax.tree.map(lambda x: lay.unpad(x, n), tree)
