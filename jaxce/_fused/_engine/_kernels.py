"""The primitives every fused walk is made of: one logits block, its two
gradient matmuls, and the loops over token and vocabulary blocks.

The two weight layouts are contracted in place: ``"vd"``: ``weight`` is
``(V, D)`` (PyTorch ``nn.Linear``), ``z = h @ W.T``; ``"dv"``: ``(D, V)`` (a
Flax ``nnx.Linear`` kernel), ``z = h @ W``. Every product is one
``lax.dot_general`` whose dimension numbers name the axes, with the input dtype
as operands and float32 accumulation (``preferred_element_type``), so neither
layout is ever transposed and a bf16 weight is never multiplied in float32.

Ragged sizes need no padding copy: the last block starts at ``size - block``
(it overlaps the previous one) and what the previous block already covered is
masked out (`chunk_start`, `owned_columns`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

C = TypeVar("C")
WEIGHT_LAYOUTS = ("vd", "dv")


def class_axis(weight_layout: str) -> int:
    """Axis of the classes in ``weight``: 0 for ``"vd"``, 1 for ``"dv"``."""
    return 0 if weight_layout == "vd" else 1


def num_classes(weight: Array, weight_layout: str) -> int:
    """``V``: the size of ``weight``'s class axis."""
    return weight.shape[class_axis(weight_layout)]


def weight_slice(weight: Array, start, c: int, weight_layout: str) -> Array:
    """``c`` classes of ``weight`` from ``start`` (its layout kept)."""
    return lax.dynamic_slice_in_dim(weight, start, c, class_axis(weight_layout))


def logits_block(
    h: Array, w: Array, b: Array | None, softcap, cdt, weight_layout: str
) -> Array:
    """``softcap(h @ w.T + b)`` (``"dv"``: ``h @ w``) in the compute dtype."""
    k = 1 - class_axis(weight_layout)  # the feature axis of w
    z = lax.dot_general(h, w, (((1,), (k,)), ((), ())), preferred_element_type=cdt)
    if b is not None:
        z = z + b.astype(cdt)[None, :]
    if softcap is not None:
        c = jnp.asarray(softcap, cdt)
        z = c * jnp.tanh(z / c)
    return z


def softcap_grad(dz: Array, z: Array, softcap) -> Array:
    """The cotangent of the logits before the soft cap: ``dz (1 - (z / c)**2)``."""
    if softcap is None:
        return dz
    return dz * (1 - jnp.square(z / jnp.asarray(softcap, z.dtype)))


def hidden_grad(dz: Array, w: Array, weight_layout: str, cdt) -> Array:
    """``dz @ W`` (``(T, D)``) for a block ``w`` of either layout."""
    k = class_axis(weight_layout)
    return lax.dot_general(dz, w, (((1,), (k,)), ((), ())), preferred_element_type=cdt)


def weight_grad(dz: Array, h: Array, weight_layout: str, cdt) -> Array:
    """``dz.T @ h`` (``(C, D)``) for ``"vd"``; ``h.T @ dz`` (``(D, C)``), ``"dv"``."""
    dims = (((0,), (0,)), ((), ()))
    if weight_layout == "vd":
        return lax.dot_general(dz, h, dims, preferred_element_type=cdt)
    return lax.dot_general(h, dz, dims, preferred_element_type=cdt)


def chunk_start(j, size: int, total: int):
    """Start of chunk ``j`` and the first index it owns (overlap for the last)."""
    lo = j * size
    return jnp.minimum(lo, total - size), lo


def owned_columns(cols: Array, lo, limit) -> Array:
    """Columns a block owns (``>= lo``: not done by the chunk before) that are
    real classes (before ``limit``; None: no limit)."""
    owned = cols >= lo
    return owned if limit is None else owned & (cols < limit)


def token_blocks(
    n: int, t: int, fn: Callable[[C, Any, Any], C], carry: C, count=None
) -> C:
    """Run ``fn(carry, start, lo)`` over the token blocks of ``t`` tokens.

    No tokens: ``carry`` as it is. One block: ``fn`` directly. With a ``count``
    (a traced int scalar: ``compact=True``) only the ``ceil(count / t)`` blocks
    that hold one of the first ``count`` tokens run (a ``fori_loop`` with a
    traced bound); the rows of the others keep their value in ``carry``.
    """
    if n == 0:
        return carry
    if t >= n:
        return fn(carry, 0, 0)

    def step(i, c: C) -> C:
        start, lo = chunk_start(i, t, n)
        return fn(c, start, lo)

    if count is not None:
        return lax.fori_loop(0, (count + t - 1) // t, step, carry)
    return lax.scan(lambda c, i: (step(i, c), None), carry, jnp.arange(-(-n // t)))[0]


def vocab_blocks(v: int, c: int, fn: Callable[[C, Any, Any], C], carry: C) -> C:
    """Run ``fn(carry, start, lo)`` over the vocabulary blocks of ``c`` classes."""
    step = lambda a, j: (fn(a, *chunk_start(j, c, v)), None)  # noqa: E731
    return lax.scan(step, carry, jnp.arange(-(-v // c)))[0]


def add_slice(full: Array, part: Array, start, axis: int = 0) -> Array:
    """``full`` with ``part`` added to its slice at ``start`` along ``axis``."""
    old = lax.dynamic_slice_in_dim(full, start, part.shape[axis], axis)
    new = old + part.astype(full.dtype)
    return lax.dynamic_update_slice_in_dim(full, new, start, axis)


def add_weight_grad(
    dw: Array, dz: Array, h: Array, c: int, cdt, weight_layout: str
) -> Array:
    """``dw += dz.T @ h`` (``"dv"``: ``h.T @ dz``) in slices of ``c`` classes.

    No temporary of the size of ``weight``.
    """
    ax = class_axis(weight_layout)
    v = dw.shape[ax]
    if c >= v:
        return dw + weight_grad(dz, h, weight_layout, cdt).astype(dw.dtype)

    def step(dw, start, lo):
        part = lax.dynamic_slice_in_dim(dz, start, c, 1)
        part = jnp.where((start + jnp.arange(c) >= lo)[None, :], part, 0)
        return add_slice(dw, weight_grad(part, h, weight_layout, cdt), start, ax)

    return vocab_blocks(v, c, step, dw)
