"""Sharding in types: which arrays carry Explicit mesh axes.

On a mesh whose axes are `jax.sharding.AxisType.Explicit` (the `jax.make_mesh`
default), an array's type records how it is split, and JAX refuses operations
whose output sharding it cannot infer: a gather such as
``take_along_axis(logits, labels)`` with class-sharded logits raises
``ShardingTypeError``. The losses then pick a label's entry with a masked sum
over the classes instead (elementwise and a reduction: every sharding types it),
and keep the cheaper gather everywhere else.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType


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
