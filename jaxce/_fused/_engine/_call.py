"""One fused call, checked: the fused twin of `jaxce._core.prepare_categorical`.

`prepare_call` is the one place a fused head reads its shared arguments
(``hidden`` / ``weight`` / ``bias`` in either layout, ``labels``,
``ignore_index``, ``where``, ``softcap``, ``temperature``, ``chunk_size``,
``memory_budget_bytes``, ``compact``), at trace time; a bad one raises
``ValueError`` / ``TypeError`` naming it and the shapes or values involved. The
result, a frozen `Call`, is what every walk of the engine starts from, so every
option means the same on every head.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ..._core import (
    as_float_input,
    check_ignore_index,
    check_integer_labels,
    compute_dtype,
    element_mask,
    out_of_range,
)
from ._kernels import WEIGHT_LAYOUTS, class_axis, num_classes
from ._plan import Blocks, block_sizes, check_budget, check_chunk_size


class Head(NamedTuple):
    """A linear head: ``hidden (N, D)``, ``weight`` in its layout, ``bias (V,)``
    or None (the differentiable arrays of a walk). The same tree holds a head's
    ``shard_map`` specs and its gradients (None where not formed)."""

    hidden: Any
    weight: Any
    bias: Any


def check_weight_layout(weight_layout: object) -> str:
    if not isinstance(weight_layout, str) or weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(
            f'`weight_layout` must be "vd" (weight (vocab, features), nn.Linear) or '
            f'"dv" (weight (features, vocab), a Flax kernel), got {weight_layout!r}.'
        )
    return weight_layout


def positive_number(value: object, name: str) -> float:
    """``value`` as a float: a finite Python / NumPy real number > 0 (trace time)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a finite number > 0, got {value!r}.")
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return x


def check_softcap(softcap: object) -> float | None:
    """``softcap`` as a float (or None): a finite number > 0."""
    return None if softcap is None else positive_number(softcap, "softcap")


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float: a finite number > 0 known at trace time."""
    return positive_number(temperature, "temperature")


def check_head(
    hidden: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None,
    weight_layout: str,
    who: str = "",
) -> Head:
    """Check one head (``who`` prefixes the argument names: ``"student_"``)."""
    hidden = as_float_input(hidden, f"{who}hidden")
    weight = as_float_input(weight, f"{who}weight")
    dims = "(vocab, features)" if weight_layout == "vd" else "(features, vocab)"
    where = f"{dims} (weight_layout={weight_layout!r})"
    if hidden.ndim != 2:
        raise ValueError(
            f"`{who}hidden` must be 2-D (tokens, features), got shape {hidden.shape}."
        )
    if weight.ndim != 2:
        raise ValueError(f"`{who}weight` must be 2-D {where}, got {weight.shape}.")
    ax = class_axis(weight_layout)
    (_, d), v = hidden.shape, weight.shape[ax]
    if weight.shape[1 - ax] != d:
        raise ValueError(
            f"`{who}weight` {weight.shape} must be {where} with the features of "
            f"`{who}hidden` {hidden.shape}: got {weight.shape[1 - ax]} != {d}."
        )
    if v == 0:
        raise ValueError(f"`{who}weight` {weight.shape} has no classes (V = 0).")
    if hidden.dtype != weight.dtype:
        raise TypeError(
            f"`{who}hidden` and `{who}weight` must have the same dtype, got "
            f"{hidden.dtype} and {weight.dtype}; cast one of them."
        )
    if bias is not None:
        bias = as_float_input(bias, f"{who}bias")
        if bias.shape != (v,):
            raise ValueError(f"`{who}bias` must have shape ({v},), got {bias.shape}.")
    return Head(hidden, weight, bias)


@dataclasses.dataclass(frozen=True)
class Call:
    """The checked shared arguments of one fused call (build with `prepare_call`).

    Attributes:
        head: the (first) head.
        labels: ``(N,)`` default-int labels, absent and out-of-range tokens set
            to 0 (safe to index with).
        present: ``(N,)`` the tokens that count (``where``, ``ignore_index``).
        invalid: present tokens whose label is outside ``[0, V)``.
        weight_layout, softcap, temperature: checked options.
        chunk_size: the requested classes per block (None, ``"auto"``, an int).
        budget: the element budget (None: the default).
        compact: pack the present tokens and skip the blocks of absent ones.
    """

    head: Head
    labels: Array
    present: Array
    invalid: Array
    weight_layout: str
    softcap: float | None
    temperature: float
    chunk_size: int | str | None
    budget: int | None
    compact: bool

    @property
    def num_tokens(self) -> int:
        return self.head.hidden.shape[0]

    @property
    def num_classes(self) -> int:
        return num_classes(self.head.weight, self.weight_layout)

    @property
    def dtype(self) -> jnp.dtype:
        """The compute dtype (float32 for bf16 / fp16 input)."""
        return jnp.dtype(compute_dtype(self.head.hidden.dtype))

    def plan(
        self,
        n: int | None = None,
        v: int | None = None,
        heads: int = 1,
        platform: str = "cpu",
    ) -> Blocks:
        """The blocks for ``n`` tokens and ``v`` classes per device (default:
        the whole call), ``heads`` logits blocks sharing the budget, on
        ``platform``."""
        n = self.num_tokens if n is None else n
        v = self.num_classes if v is None else v
        args = (self.chunk_size, self.budget, self.compact, heads, platform)
        return block_sizes(n, v, *args)


def check_labels(labels: ArrayLike, n: int, name: str = "labels") -> Array:
    labels = jnp.asarray(labels)
    check_integer_labels(labels)
    if labels.shape != (n,):
        raise ValueError(
            f"`{name}` must have shape ({n},) (one per row of `hidden`), got "
            f"{labels.shape}."
        )
    return labels


def prepare_call(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike | None,
    *,
    bias: ArrayLike | None = None,
    ignore_index: object = None,
    where: ArrayLike | None = None,
    softcap: object = None,
    temperature: object = 1.0,
    chunk_size: object = None,
    memory_budget_bytes: object = None,
    weight_layout: object = "vd",
    compact: object = False,
    who: str = "",
) -> Call:
    """Check the shared arguments of a fused head (trace time).

    ``labels`` None: no targets (all labels 0; ``ignore_index`` then needs
    labels and is refused).
    """
    layout = check_weight_layout(weight_layout)
    head = check_head(hidden, weight, bias, layout, who)
    n, v = head.hidden.shape[0], num_classes(head.weight, layout)
    cap = check_softcap(softcap)
    tau = check_temperature(temperature)
    chunk = check_chunk_size(chunk_size)
    budget = check_budget(memory_budget_bytes, compute_dtype(head.hidden.dtype))
    if not isinstance(compact, bool):
        raise TypeError(f"`compact` must be True or False, got {compact!r}.")
    if where is not None and jnp.shape(where) != (n,):
        raise ValueError(
            f"`where` must be a per-token mask of shape ({n},), got {jnp.shape(where)}."
        )
    present = element_mask(where, (n,))
    ignore = check_ignore_index(ignore_index)
    int_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
    if labels is None:
        if ignore is not None:
            raise ValueError("`ignore_index` needs `labels` (the tokens it marks).")
        labels = jnp.zeros((n,), int_dtype)
        invalid = jnp.zeros((n,), bool)
    else:
        labels = check_labels(labels, n)
        if ignore is not None:
            present = present & (labels != ignore)
        invalid = present & out_of_range(labels, v)
        labels = jnp.where(present & ~invalid, labels, 0).astype(int_dtype)
    return Call(
        head, labels, present, invalid, layout, cap, tau, chunk, budget, compact
    )
