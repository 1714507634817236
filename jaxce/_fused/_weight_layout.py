"""The two weight layouts of the fused loss, contracted in place.

``"vd"``: ``weight`` is ``(V, D)`` (PyTorch ``nn.Linear``), ``z = h @ W.T``;
``"dv"``: ``(D, V)`` (a Flax ``nnx.Linear`` kernel), ``z = h @ W``. Every
product is one ``lax.dot_general`` whose dimension numbers name the axes, so
neither layout is ever transposed into the other.
"""

from __future__ import annotations

from jax import lax
from jaxtyping import Array

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
