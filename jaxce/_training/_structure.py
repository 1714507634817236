"""One compiled program per optimizer *structure*, whatever object holds it.

The training chunk is compiled once per static configuration, and the optimizer
is part of it. Optax builds a new `optax.GradientTransformation` (new closures)
at every call of ``optax.adam(lr)``, so keying the compilation cache on the
object would recompile every call of a sweep. `SameUpdate` wraps the optimizer
and compares equal to any other wrapper whose ``update`` traces, on the run's
parameters and optimizer state, to the same program: the same jaxpr, the same
literal values and the same closed-over constants. A hyperparameter held in the
optimizer *state* (``optax.inject_hyperparams(optax.adam)(learning_rate=lr)``)
is an input of that program, not a literal, so every learning rate shares one
compilation; a hyperparameter baked into the closure (``optax.adam(lr)``) is a
literal, so each value compiles its own program, as it must.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np
import optax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal


def _value_bytes(value: Any) -> bytes:
    try:
        a = np.asarray(value)
        return f"{a.dtype.str}{a.shape}".encode() + a.tobytes()
    except Exception:  # e.g. typed PRNG keys: compare by identity (never shared)
        return f"object {id(value)}".encode()


def _walk(jaxpr: Jaxpr, out: list[bytes]) -> None:
    """Append the exact bytes of every literal and constant, nested jaxprs too."""
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, Literal):
                out.append(_value_bytes(v.val))
        for param in eqn.params.values():
            _walk_param(param, out)
    for v in jaxpr.outvars:
        if isinstance(v, Literal):
            out.append(_value_bytes(v.val))


def _walk_param(param: Any, out: list[bytes]) -> None:
    if isinstance(param, ClosedJaxpr):
        out.extend(_value_bytes(c) for c in param.consts)
        _walk(param.jaxpr, out)
    elif isinstance(param, Jaxpr):
        _walk(param, out)
    elif isinstance(param, tuple | list):
        for p in param:
            _walk_param(p, out)


def update_key(optimizer: optax.GradientTransformation, params, opt_state) -> str:
    """A digest of the program ``optimizer.update(grads, opt_state, params)``."""
    with jax.numpy_dtype_promotion("standard"):
        closed, shape = jax.make_jaxpr(optimizer.update, return_shape=True)(
            params, opt_state, params
        )
    parts = [str(closed.jaxpr).encode(), str(jax.tree.structure(shape)).encode()]
    parts += [_value_bytes(c) for c in closed.consts]
    _walk(closed.jaxpr, parts)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


class SameUpdate:
    """An optimizer, equal to every other whose ``update`` is the same program.

    ``init`` and ``update`` are those of the wrapped optimizer. Only ``update``
    runs inside the compiled chunk (``init`` runs before it), so only ``update``
    is compared.
    """

    def __init__(self, optimizer: optax.GradientTransformation, params, opt_state):
        self.optimizer = optimizer
        self.key = update_key(optimizer, params, opt_state)

    @property
    def init(self):
        return self.optimizer.init

    @property
    def update(self):
        return self.optimizer.update

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SameUpdate) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"SameUpdate({self.optimizer!r}, key={self.key[:12]})"
