"""Where a sharded fused call's arrays live: the mesh, its axes, padding, and
the one ``shard_map`` of the engine.

`check_layout` checks ``mesh`` / ``batch_axis`` / ``vocab_axis`` and returns a
`Layout` (hashable: a ``custom_vjp`` nondiff argument) with the collectives and
index arithmetic of the vocabulary-parallel walks, the padding of sizes the
mesh does not divide (`Layout.padded`, `pad_rows`, `Layout.unpad`) and
`Layout.run`, the engine's only ``shard_map``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array

from ._kernels import class_axis

AxisName = str | tuple[str, ...] | None


def _names(axis: AxisName) -> tuple[str, ...]:
    if axis is None:
        return ()
    return (axis,) if isinstance(axis, str) else tuple(axis)


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


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one sharded call's arrays live (hashable: a custom_vjp nondiff arg).

    Build with `check_layout`; ``num_classes`` is set (to the real vocabulary
    size) only when the vocabulary is padded to a multiple of the vocabulary
    axis, the padding being the last classes of ``weight``; ``weight_layout``
    says which axis of ``weight`` holds the classes (and is split).
    """

    mesh: Mesh
    batch_axis: AxisName
    vocab_axis: AxisName
    num_classes: int | None = None
    weight_layout: str = "vd"

    def classes(self, weight: Array) -> int:
        """Classes of ``weight`` (this device's block inside ``shard_map``)."""
        return weight.shape[class_axis(self.weight_layout)]

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

    def localise(self, labels: Array, v_local: int) -> Array:
        """Labels relative to this device's vocabulary block (inside
        ``shard_map``)."""
        return labels - jnp.asarray(self.vocab_offset(v_local), labels.dtype)

    def real_classes(self, v_local: int):
        """Real (not padding) classes of this device's block; None: all of them."""
        if self.num_classes is None:
            return None
        return jnp.clip(self.num_classes - self.vocab_offset(v_local), 0, v_local)

    def padded(self, n: int, v: int) -> tuple[Layout, int, int]:
        """``(layout, n_pad, v_pad)``: ``n`` tokens and ``v`` classes rounded up
        to multiples of the batch and vocabulary axes; the layout records the
        real ``v`` (`num_classes`) when the vocabulary is padded."""
        n_pad = round_up(n, self.size(self.batch_axis))
        v_pad = round_up(v, self.size(self.vocab_axis))
        lay = self if v_pad == v else dataclasses.replace(self, num_classes=v)
        return lay, n_pad, v_pad

    def unpad(self, x: Array, n: int) -> Array:
        """Per-token ``x`` without its padding tokens (after the first ``n``).

        An uneven split is no array layout: ``x`` is replicated first.
        """
        return x if x.shape[0] == n else self.place(x, P())[:n]

    def rows(self, x):
        """A per-token ``x`` placed like the engine's unpadded results: split
        over the batch axis when it divides ``N``, else as it is."""
        if x is None or x.shape[0] % self.size(self.batch_axis):
            return x
        return self.place(x, self.row())

    def rows_reducer(self, reducer):
        """A `Reducer` whose per-token arrays are placed as `rows` places them."""
        present, weights = self.rows(reducer.present), self.rows(reducer.weights)
        return dataclasses.replace(reducer, present=present, weights=weights)

    def per_class(self, x):
        """A per-class ``x`` placed like the engine's vocabulary split (when
        the vocabulary axis divides ``V``), so its gradient is split alike."""
        if x is None or x.shape[0] % self.size(self.vocab_axis):
            return x
        return self.place(x, self.vocab_spec())

    def row(self) -> P:
        return P(self.batch_axis)

    def hidden_spec(self) -> P:
        """``hidden`` ``(N, D)`` split over the batch axis along its rows."""
        return P(self.batch_axis, None)

    def weight_spec(self) -> P:
        """``weight`` split over the vocabulary axis along its class axis."""
        split = self.vocab_axis
        return P(split, None) if self.weight_layout == "vd" else P(None, split)

    def vocab_spec(self) -> P:
        """A per-class ``(V,)`` array split over the vocabulary axis."""
        return P(self.vocab_axis)

    def place(self, x, spec):
        """Reshard ``x`` onto ``spec`` on meshes with explicit axis types.

        Auto meshes need nothing: ``shard_map`` reshards its inputs itself.
        """
        if x is None or not _names(self.batch_axis) + _names(self.vocab_axis):
            return x
        if all(t == AxisType.Explicit for t in self.mesh.axis_types):
            return jax.sharding.reshard(x, NamedSharding(self.mesh, spec))
        return x

    def run(self, fn: Callable, args: tuple, in_specs: tuple, out_specs):
        """``fn(*args)`` under ``jax.shard_map`` on this mesh: the engine's one
        ``shard_map`` (spec trees shaped like ``args`` and the result)."""
        mapped = jax.shard_map(
            fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
        return mapped(*args)


def check_layout(mesh: object, batch_axis: AxisName, vocab_axis: AxisName) -> Layout:
    """Check the mesh arguments (before the other arguments are checked)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh)}.")
    _axis_size(mesh, batch_axis, "batch_axis")
    _axis_size(mesh, vocab_axis, "vocab_axis")
    shared = set(_names(batch_axis)) & set(_names(vocab_axis))
    if shared:
        raise ValueError(
            f"`batch_axis`={batch_axis!r} and `vocab_axis`={vocab_axis!r} share the "
            f"mesh axes {sorted(shared)}; use different axes."
        )
    return Layout(mesh, batch_axis, vocab_axis)


def layout_or_none(mesh: object, batch_axis: AxisName, vocab_axis: AxisName):
    """`check_layout` of a ``mesh``; None without one (then no axis may be named).

    Called first, before any dispatch, so a misplaced axis is never ignored.
    """
    if mesh is None:
        if batch_axis is not None or vocab_axis is not None:
            raise ValueError("`batch_axis` / `vocab_axis` need a `mesh`.")
        return None
    return check_layout(mesh, batch_axis, vocab_axis)


def round_up(x: int, k: int) -> int:
    return -(-x // k) * k


def pad_rows(x: Array, rows: int, axis: int = 0) -> Array:
    """``x`` with zeros appended along ``axis`` up to ``rows``."""
    if x.shape[axis] == rows:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, rows - x.shape[axis])
    return jnp.pad(x, widths)


@dataclasses.dataclass(frozen=True)
class Vocab:
    """The vocabulary axis as a walk sees it: the collectives over the shards
    of the vocabulary (identities on one device) and this shard's first class.

    Build inside ``shard_map`` (``offset`` may be traced).
    """

    lay: Layout | None = None
    offset: object = 0

    @property
    def sharded(self) -> bool:
        return self.lay is not None and self.lay.size(self.lay.vocab_axis) > 1

    def psum(self, x):
        return lax.psum(x, self.lay.vocab_axis) if self.sharded else x  # type: ignore[union-attr]

    def pmax(self, x):
        return lax.pmax(x, self.lay.vocab_axis) if self.sharded else x  # type: ignore[union-attr]

    def pmin(self, x):
        return lax.pmin(x, self.lay.vocab_axis) if self.sharded else x  # type: ignore[union-attr]

    def max(self, m: Array) -> tuple[Array, Array]:
        """``(M, M0)``: ``M`` the max of ``m`` over the shards, ``M0`` the same
        with a ``-inf`` (no class left anywhere) as 0, the shift that keeps
        ``exp(m - M0)`` free of NaN."""
        big = self.pmax(m)
        return big, jnp.where(jnp.isfinite(big), big, 0)

    def log_softmax(self, z: Array) -> Array:
        """``log_softmax`` of ``(T, C)`` rows over every shard's classes."""
        if not self.sharded:
            return jax.nn.log_softmax(z, axis=-1)
        _, m = self.max(jnp.max(z, axis=-1))
        s = self.psum(jnp.sum(jnp.exp(z - m[:, None]), axis=-1))
        return z - (m + jnp.log(s))[:, None]
