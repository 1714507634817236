"""The losses under test: one entry per loss, for the generic checks to loop over.

In the style of optax's ``contrib/_common_test.py``: every generic check (options
and reductions, dtypes, JAX transformations, bad input, closed form == autodiff)
is a ``pytest.mark.parametrize`` over `LOSSES` (or a part of it, chosen by the
entries' fields), so a new loss is tested by adding its entry here.

Each `Loss` names the loss, holds the function and its closed-form gradient,
says what its two arguments are and which keyword options it takes, and makes
valid example inputs:

- `Loss.example`: float32 ``(x, y, options)`` of shape ``(3, 4)`` (3 rows, 4
  classes), with options that exercise most of the loss's code paths;
- `Loss.every_option`: ``(x, y, options)`` with every option the loss takes set
  at once (6 elements, 4 classes; element-wise losses get a vector), in any dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import closed_form

# -- the example inputs (3 rows, 4 classes) -----------------------------------------

_R = h.rng(30)
LABELS = np.array([0, 2, 3], np.int32)
TARGETS = h.probs(_R, 3, 4)  # rows on the simplex
BINARY = np.array([[1.0, 0.0, 0.3, 1.0]] * 3, np.float32)  # one soft label
CLASS_WEIGHTS = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
WEIGHTS = np.array([0.5, 2.0, 1.0], np.float32)  # one per row


def example_logits(shape=(3, 4)) -> np.ndarray:
    return h.logits(h.rng(31), shape)


def example_probs(shape=(3, 4)) -> np.ndarray:
    """Element-wise probabilities in (0.1, 0.9) (rows need not sum to 1)."""
    return h.uniform(h.rng(32), shape, 0.1, 0.9)


def every_option_data(dtype) -> dict[str, Any]:
    """The inputs `Loss.every_option` picks from (6 elements, 4 classes)."""
    r = np.random.default_rng(1)
    n, k = 6, 4
    labels = r.integers(0, k, n)
    class_mask = (r.uniform(size=(n, k)) < 0.6) | (np.arange(k) == labels[:, None])
    z, y = jnp.asarray(2 * r.standard_normal(n), dtype), jnp.asarray(r.uniform(size=n))
    y = y.astype(dtype)
    logits = jnp.asarray(2 * r.standard_normal((n, k)), dtype)
    probs = jnp.asarray(r.dirichlet(np.ones(k), n) * 0.9 + 0.02, dtype)
    targets = jnp.asarray(r.dirichlet(np.ones(k), n), dtype)
    ignored = jnp.asarray(np.where(np.arange(n) == 2, -1, labels), jnp.int32)
    common = dict(
        weights=jnp.asarray(r.uniform(0.5, 2, n), dtype),
        where=jnp.asarray(np.arange(n) != 4),
        base=2,
    )
    cw = jnp.asarray(r.uniform(0.5, 2, k), dtype)
    sparse = dict(common, class_weights=cw, ignore_index=-1, label_smoothing=0.2)
    sparse["where"] = jnp.asarray(class_mask)  # a per-class mask
    return dict(
        z=z, y=y, logits=logits, probs=probs, targets=targets, ignored=ignored,
        common=common, cw=cw, sparse=sparse,
    )  # fmt: skip


# -- the registry -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Loss:
    """One loss and what the generic tests need to know about it."""

    name: str
    fn: Callable[..., jax.Array]
    closed_form: Callable[..., jax.Array]
    family: str  # "softmax", "probability", "binary" or "focal"
    inputs: str  # the first argument: "logits" or "probs"
    targets: str  # "labels" (integers), "distributions" or "binary" (element-wise)
    options: tuple[str, ...]  # every keyword argument it takes
    example: Callable[[], tuple[np.ndarray, np.ndarray, dict]]
    every_option_from: Callable[[Mapping], tuple]  # picks from `every_option_data`

    def __str__(self) -> str:
        return self.name

    @property
    def elementwise(self) -> bool:
        """One loss per element (binary losses), not one per row of classes."""
        return self.targets == "binary"

    def example_fn(self) -> tuple[Callable[..., jax.Array], np.ndarray]:
        """``(f, x)``: the loss of its first argument alone, ``y`` and the
        example's options fixed (more keyword options can be passed to ``f``)."""
        x, y, options = self.example()

        def f(x, **kw):
            return self.fn(x, y, **options, **kw)

        return f, x

    def element_shape(self, shape) -> tuple[int, ...]:
        """The shape of ``reduction="none"`` (and of ``where``) for inputs ``shape``."""
        return tuple(shape) if self.elementwise else tuple(shape[:-1])

    def every_option(self, dtype=jnp.float32) -> tuple[jax.Array, jax.Array, dict]:
        """``(x, y, options)`` with every option the loss takes set at once."""
        return self.every_option_from(every_option_data(dtype))

    def grads(self, x, y, options: Mapping):
        """(closed form, ``jax.grad`` of the summed loss), one compilation for both."""

        @jax.jit  # cheaper than op-by-op dispatch here
        def both(x):
            auto = jax.grad(lambda x: jnp.sum(self.fn(x, y, **options)))(x)
            return self.closed_form(x, y, **options), auto

        return both(x)


_COMMON = ("weights", "where", "reduction", "normalizer", "base")
_WEIGHTED = dict(weights=WEIGHTS)
_WEIGHTED_ELEMENTS = dict(weights=WEIGHTS[:, None])

LOSSES = [
    Loss(
        "softmax_cross_entropy",
        jaxce.softmax_cross_entropy,
        closed_form.softmax_cross_entropy,
        family="softmax",
        inputs="logits",
        targets="distributions",
        options=("axis", "class_weights", "label_smoothing", *_COMMON),
        example=lambda: (
            example_logits(),
            TARGETS,
            dict(class_weights=CLASS_WEIGHTS, label_smoothing=0.1),
        ),
        every_option_from=lambda d: (
            d["logits"],
            d["targets"],
            dict(d["common"], class_weights=d["cw"], label_smoothing=0.1),
        ),
    ),
    Loss(
        "sparse_softmax_cross_entropy",
        jaxce.sparse_softmax_cross_entropy,
        closed_form.sparse_softmax_cross_entropy,
        family="softmax",
        inputs="logits",
        targets="labels",
        options=(
            "axis",
            "class_weights",
            "ignore_index",
            "label_smoothing",
            "z_loss",
            *_COMMON,
        ),  # fmt: skip
        example=lambda: (
            example_logits(),
            LABELS,
            dict(
                class_weights=CLASS_WEIGHTS,
                label_smoothing=0.1,
                z_loss=1e-3,
                **_WEIGHTED,
            ),
        ),
        every_option_from=lambda d: (
            d["logits"],
            d["ignored"],
            dict(d["sparse"], z_loss=0.05),
        ),
    ),
    Loss(
        "categorical_cross_entropy",
        jaxce.categorical_cross_entropy,
        closed_form.categorical_cross_entropy,
        family="probability",
        inputs="probs",
        targets="distributions",
        options=("axis", "eps", "class_weights", "label_smoothing", *_COMMON),
        example=lambda: (
            example_probs(),
            TARGETS,
            dict(class_weights=CLASS_WEIGHTS, label_smoothing=0.1),
        ),
        every_option_from=lambda d: (
            d["probs"],
            d["targets"],
            dict(d["common"], class_weights=d["cw"], label_smoothing=0.1, eps=0.05),
        ),
    ),
    Loss(
        "sparse_categorical_cross_entropy",
        jaxce.sparse_categorical_cross_entropy,
        closed_form.sparse_categorical_cross_entropy,
        family="probability",
        inputs="probs",
        targets="labels",
        options=(
            "axis",
            "eps",
            "class_weights",
            "ignore_index",
            "label_smoothing",
            *_COMMON,
        ),  # fmt: skip
        example=lambda: (
            example_probs(),
            LABELS,
            dict(class_weights=CLASS_WEIGHTS, label_smoothing=0.1, **_WEIGHTED),
        ),
        every_option_from=lambda d: (
            d["probs"],
            d["ignored"],
            dict(d["sparse"], eps=0.05),
        ),
    ),
    Loss(
        "sigmoid_binary_cross_entropy",
        jaxce.sigmoid_binary_cross_entropy,
        closed_form.sigmoid_binary_cross_entropy,
        family="binary",
        inputs="logits",
        targets="binary",
        options=("pos_weight", "label_smoothing", *_COMMON),
        example=lambda: (
            example_logits(),
            BINARY,
            dict(pos_weight=np.float32(2.0), label_smoothing=0.1, **_WEIGHTED_ELEMENTS),
        ),
        every_option_from=lambda d: (
            d["z"],
            d["y"],
            dict(d["common"], pos_weight=3.0, label_smoothing=0.1),
        ),
    ),
    Loss(
        "binary_cross_entropy",
        jaxce.binary_cross_entropy,
        closed_form.binary_cross_entropy,
        family="binary",
        inputs="probs",
        targets="binary",
        options=("eps", "label_smoothing", *_COMMON),
        example=lambda: (
            example_probs(),
            BINARY,
            dict(label_smoothing=0.1, **_WEIGHTED_ELEMENTS),
        ),
        every_option_from=lambda d: (
            jnp.clip(h.sigmoid_np(d["z"]), 0.02, 0.98).astype(d["z"].dtype),
            d["y"],
            dict(d["common"], eps=0.03, label_smoothing=0.1),
        ),
    ),
    Loss(
        "sigmoid_focal_loss",
        jaxce.sigmoid_focal_loss,
        closed_form.sigmoid_focal_loss,
        family="focal",
        inputs="logits",
        targets="binary",
        options=("alpha", "gamma", *_COMMON),
        example=lambda: (example_logits(), BINARY, dict(alpha=0.25, gamma=1.5)),
        every_option_from=lambda d: (
            d["z"],
            d["y"],
            dict(d["common"], alpha=0.3, gamma=2.5),
        ),
    ),
    Loss(
        "softmax_focal_loss",
        jaxce.softmax_focal_loss,
        closed_form.softmax_focal_loss,
        family="focal",
        inputs="logits",
        targets="labels",
        options=("axis", "alpha", "gamma", "ignore_index", *_COMMON),
        example=lambda: (
            example_logits(),
            LABELS,
            dict(alpha=CLASS_WEIGHTS, gamma=2.0),
        ),
        every_option_from=lambda d: (
            d["logits"],
            d["ignored"],
            dict(d["common"], alpha=d["cw"], gamma=1.5, ignore_index=-1),
        ),
    ),
]
BY_NAME = {loss.name: loss for loss in LOSSES}
FAMILIES = ("softmax", "probability", "binary", "focal")


def where(**fields) -> list[Loss]:
    """The entries whose fields have the given values, e.g. ``inputs="probs"``."""
    return [
        loss for loss in LOSSES if all(getattr(loss, k) == v for k, v in fields.items())
    ]


def taking(option: str) -> list[Loss]:
    """The entries that take keyword option ``option``."""
    return [loss for loss in LOSSES if option in loss.options]


def each(losses: list[Loss] | None = None, argname: str = "loss"):
    """``pytest.mark.parametrize`` over ``losses`` (default: all), by name."""
    losses = LOSSES if losses is None else losses
    return pytest.mark.parametrize(argname, losses, ids=[loss.name for loss in losses])
