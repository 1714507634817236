"""Value checks of concrete training data, run by `jaxce.fit` before compiling.

The losses cannot raise on values that only exist at run time (a traced label of
42 gives the documented NaN, and `jaxce.validate` is the opt-in check). `fit`
holds its data as concrete arrays, so it checks them on the host, once, with
NumPy, and names the argument, the first offending index and its value:

- ``x`` (and ``eval_data[0]``): every value finite (no NaN, no inf);
- labels, by the loss they are for (the model's natural loss when ``loss=None``,
  or a jaxce loss, also through `functools.partial`): integer labels of a
  softmax model in ``[0, num_classes)`` (or equal to ``ignore_index``); binary
  labels of a scalar-logit model in ``[0, 1]`` (0/1, or soft); distribution
  targets in ``[0, 1]``;
- float labels for any other ``loss``: no NaN.

Arrays that are traced (under a caller's own `jax.jit`) are left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from .._losses._binary import binary_cross_entropy, sigmoid_binary_cross_entropy
from .._losses._focal import sigmoid_focal_loss, softmax_focal_loss
from .._losses._probability import (
    categorical_cross_entropy,
    sparse_categorical_cross_entropy,
)
from .._losses._softmax import softmax_cross_entropy, sparse_softmax_cross_entropy

_BINARY = (sigmoid_binary_cross_entropy, binary_cross_entropy, sigmoid_focal_loss)
_SPARSE = (
    sparse_softmax_cross_entropy,
    sparse_categorical_cross_entropy,
    softmax_focal_loss,
)
_DENSE = (softmax_cross_entropy, categorical_cross_entropy)
_KINDS = ((_BINARY, "binary"), (_SPARSE, "sparse"), (_DENSE, "dense"))


def _unwrap(loss: Callable) -> tuple[Any, dict[str, Any]]:
    """The function under ``functools.partial`` layers, and their keywords."""
    keywords: dict[str, Any] = {}
    while isinstance(loss, functools.partial):
        keywords = {**loss.keywords, **keywords}
        loss = loss.func
    return loss, keywords


def label_rule(loss: Callable | None, out_shape: tuple[int, ...]):
    """``(kind, num_classes, ignore_index)`` for the labels ``loss`` expects.

    ``kind`` is ``"binary"``, ``"sparse"``, ``"dense"`` or ``None`` (a loss jaxce
    does not know: only NaN is checked).
    """
    if loss is None:
        kind, keywords = ("binary" if out_shape == () else "sparse"), {}
    else:
        fn, keywords = _unwrap(loss)
        kind = None
        for kinds, name in _KINDS:
            if any(fn is k for k in kinds):
                kind = name
        if keywords.get("axis", -1) != -1 or keywords.get("where") is not None:
            kind = None
    classes = out_shape[-1] if kind in ("sparse", "dense") and out_shape else None
    return kind, classes, keywords.get("ignore_index")


def _first(bad: np.ndarray, values: np.ndarray, name: str) -> str:
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    shown = ", ".join(map(str, index))
    return f"first {name}[{shown}] = {values[index].item()!r}"


def _count(bad: np.ndarray, noun: str) -> str:
    n = int(bad.sum())
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _seen(values: np.ndarray) -> str:
    unique = np.unique(
        values[np.isfinite(values)] if values.dtype.kind == "f" else values
    )
    if unique.size <= 8:
        return "values seen: " + ", ".join(f"{v:g}" for v in unique.tolist())
    return f"values seen: {unique.min():g} .. {unique.max():g}"


def check_inputs(x: Any, name: str) -> None:
    """Every value of the concrete float array ``x`` is finite."""
    if isinstance(x, Tracer):
        return
    if isinstance(x, jax.Array) and {d.platform for d in x.devices()} != {"cpu"}:
        if bool(jnp.all(jnp.isfinite(x))):  # on the device: no copy to the host
            return
    a = np.asarray(x)
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(
            f"`{name}` holds {_count(bad, 'non-finite value')} (NaN or inf), "
            f"{_first(bad, a, name)}; training on them gives NaN parameters. Drop or "
            "impute them first."
        )


def check_labels(y: Any, name: str, rule, model: str = "`model`") -> None:
    """The concrete labels ``y`` follow ``rule`` (from `label_rule`)."""
    if isinstance(y, Tracer):
        return
    kind, classes, ignore_index = rule
    a = np.asarray(y)
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"`{name}` holds NaN labels, {_first(np.isnan(a), a, name)}.")
    if kind == "sparse" and a.dtype.kind in "iu" and classes is not None:
        bad = (a < 0) | (a >= classes)
        if ignore_index is not None:
            bad &= a != ignore_index
        if bad.any():
            hint = ""
            if a.max() >= classes:
                hint = f"; does {model} need more than {classes} classes?"
            allowed = (
                "" if ignore_index is None else f" (or `ignore_index`={ignore_index})"
            )
            raise ValueError(
                f"`{name}` holds {_count(bad, 'label')} outside [0, {classes})"
                f"{allowed} "
                f"for {model} with {classes} classes, {_first(bad, a, name)} "
                f"({_seen(a)}){hint}"
            )
    if kind in ("binary", "dense"):
        bad = (a < 0) | (a > 1)
        if bad.any():
            what = (
                "binary labels, 0 or 1 (or probabilities in [0, 1]), for "
                f"{model} with a scalar logit"
                if kind == "binary"
                else "target probabilities in [0, 1]"
            )
            raise ValueError(
                f"`{name}` must hold {what}; it holds {_count(bad, 'value')} "
                f"outside [0, 1], {_first(bad, a, name)} ({_seen(a)})."
            )
