"""Sharding in types: which arrays carry Explicit mesh axes.

On a mesh whose axes are `jax.sharding.AxisType.Explicit` (the `jax.make_mesh`
default), an array's type records how it is split, and JAX refuses operations
whose output sharding it cannot infer: a gather such as
``take_along_axis(logits, labels)`` with class-sharded logits raises
``ShardingTypeError``. The losses then pick a label's entry with a masked sum
over the classes instead (elementwise and a reduction: every sharding types it),
and keep the cheaper gather everywhere else. The fused losses, built from
blockwise kernels (scans over blocks, dynamic slices), run on such input with
the mesh's axes as Auto (`run_auto`), where the compiler partitions them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import jax
from jax.sharding import AxisType, PartitionSpec as P

T = TypeVar("T")


def explicitly_sharded(*arrays: object) -> bool:
    """True when any of ``arrays`` is split over an Explicit mesh axis.

    Looks at the abstract type only (works on tracers and on concrete arrays);
    None entries and Python scalars are skipped.
    """
    for a in arrays:
        if a is None or not hasattr(a, "shape"):
            continue
        sharding = getattr(jax.typeof(a), "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if sharding is None or mesh is None or not mesh.axis_names:
            continue
        explicit = {
            name
            for name, kind in zip(mesh.axis_names, mesh.axis_types)
            if kind == AxisType.Explicit
        }
        for entry in sharding.spec:
            names = entry if isinstance(entry, tuple) else (entry,)
            if any(n in explicit for n in names if n is not None):
                return True
    return False


def explicit_mesh(*arrays: object):
    """The (abstract) mesh of the first of ``arrays`` split over an Explicit
    axis, or None."""
    for a in arrays:
        if explicitly_sharded(a):
            return jax.typeof(a).sharding.mesh
    return None


def batch_spec(x: object) -> P:
    """``P(<x's first-axis sharding>)``: how per-row results of ``x`` are split."""
    spec = jax.typeof(x).sharding.spec
    return P(spec[0] if len(spec) else None)


def run_auto(fn: Callable[..., T], args: tuple, out_sharding) -> T:
    """``fn(*args)`` with the Explicit mesh axes of ``args`` treated as Auto.

    For functions built from blockwise kernels (``lax.scan`` over vocabulary or
    token blocks, dynamic slices, online accumulators), which have no sharding
    rule JAX can type on Explicit axes: inside `jax.sharding.auto_axes` the
    compiler partitions them as on an Auto mesh (the single-device answer), and
    the results come out with ``out_sharding`` (a pytree of `PartitionSpec`).
    Gradients come back sharded like their inputs. Call it only when
    `explicitly_sharded` is true of ``args``; inside, the arguments are no longer
    explicitly sharded, so ``fn`` may be the public function itself.
    """
    mesh = explicit_mesh(*args)
    if mesh is None:
        raise ValueError("run_auto needs an explicitly sharded argument.")
    with jax.sharding.use_abstract_mesh(mesh):
        return cast(T, jax.sharding.auto_axes(fn, out_sharding=out_sharding)(*args))
