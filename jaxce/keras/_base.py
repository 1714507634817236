"""What the Keras loss classes share: the base class, argument checks and the
conversions between Keras' inputs and jaxce's.

Each class takes Keras' arguments under Keras' names, in Keras' order and with
Keras' defaults (``from_logits=False``: a model ending in a softmax or sigmoid),
then jaxce's extra options, keyword-only.

Design: a class's ``call(y_true, y_pred)`` returns jaxce's per-element losses
(``reduction="none"``); `keras.losses.Loss.__call__` then applies
``sample_weight``, any Keras mask and the Keras ``reduction``. Elements whose
label is ``ignore_class`` get loss 0 and a Keras mask (as Keras' own
``SparseCategoricalCrossentropy(ignore_class=)`` does), so the
``"sum_over_batch_size"`` reduction divides by the number of the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax.numpy as jnp
import keras
import numpy as np
from jaxtyping import Array

# Keras' own losses mark ignored elements with this (no public export).
from keras.src.backend import set_keras_mask

from .._core import check_nonneg, check_range

Floats = float | int | np.number | Sequence[float | int] | np.ndarray | Array
"""A scalar or a 1-D sequence of numbers (``class_weights``, ``pos_weight``, ...)."""
Number = int | float
"""A Python number (``label_smoothing``, ``z_loss``, ``gamma``, ...)."""
Dtype = str | keras.DTypePolicy | None
"""A Keras loss ``dtype``: a dtype name, a dtype policy, or None (floatx)."""


register = keras.saving.register_keras_serializable(package="jaxce")
"""Registers a class for Keras serialisation as ``"jaxce>ClassName"``."""


def to_floats(value: Floats | None, name: str) -> float | list[float] | None:
    """``value`` as a Python float or list of floats (what a Keras config holds);
    raise unless it is a scalar or 1-D and finite."""
    if value is None:
        return None
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        msg = f"`{name}` must be a number or a 1-D list, got {value!r}."
        raise TypeError(msg) from e
    if v.ndim > 1 or not np.all(np.isfinite(v)):
        raise ValueError(f"`{name}` must be finite and scalar or 1-D, got {value!r}.")
    return float(v) if v.ndim == 0 else [float(x) for x in v]


def to_index(value: int | np.integer | None, name: str) -> int | None:
    """An integer hyperparameter (``ignore_class``) as a Python int, or None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer or None, got {value!r}.")
    return int(value)


def check_alpha(alpha: object) -> float:
    """A binary ``alpha`` in [0, 1] as a float."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise TypeError(f"`alpha` must be a number in [0, 1], got {alpha!r}.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}.")
    return float(alpha)


def check_flag(value: bool, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_from_logits(from_logits: bool) -> bool:
    return check_flag(from_logits, "from_logits")


def check_smoothing(label_smoothing: Number) -> float:
    check_range(label_smoothing, "label_smoothing", 0.0, 1.0, hi_open=True)
    return float(label_smoothing)


def check_gamma(gamma: Number) -> float:
    check_nonneg(gamma, "gamma")
    return float(gamma)


def binary_logits(probs: Array) -> Array:
    """Probabilities as the logits ``log p - log(1 - p)`` of ``clip(p, e, 1 - e)``
    (``e = keras.config.epsilon()``), for the losses jaxce has from logits only.

    ``sigmoid`` of the result is the clipped probability (to rounding), so a
    logit-space loss on it is Keras' clipped probability-space loss.
    """
    e = keras.config.epsilon()
    p = jnp.clip(jnp.asarray(probs), e, 1 - e)
    return jnp.log(p) - jnp.log1p(-p)


def categorical_logits(probs: Array, axis: int) -> Array:
    """Probabilities as logits ``log clip(p / sum(p), e, 1 - e)`` along ``axis``:
    Keras' ``CategoricalFocalCrossentropy(from_logits=False)`` renormalises the
    rows, then clips (``e = keras.config.epsilon()``)."""
    e = keras.config.epsilon()
    p = jnp.asarray(probs)
    p = p / jnp.sum(p, axis=axis, keepdims=True)
    return jnp.log(jnp.clip(p, e, 1 - e))


def as_array(value: float | list[float] | None, like: Array) -> Array | float | None:
    """A stored float or list as an array of ``like``'s dtype (floats stay)."""
    if value is None or isinstance(value, float):
        return value
    return jnp.asarray(value, like.dtype)


def sparse_labels(y_true: Array, y_pred: Array, axis: int) -> Array:
    """Keras' ``y_true`` (cast to the loss dtype by Keras, maybe with a trailing
    axis of size 1) as int32 class labels of the shape of ``y_pred`` less ``axis``."""
    y_true = jnp.asarray(y_true)
    if y_true.ndim == jnp.ndim(y_pred) and y_true.shape[axis] == 1:
        y_true = jnp.squeeze(y_true, axis=axis)
    return y_true.astype(jnp.int32)


def same_rank(y_true: Array, y_pred: Array) -> tuple[Array, Array]:
    """Keras' rank alignment of binary targets: a size-1 last axis on one side is
    added to / removed from the other (``(N,)`` labels with ``(N, 1)`` logits)."""
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    elif y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    return y_true.astype(y_pred.dtype), y_pred


def mask_ignored(losses: Array, labels: Array, ignore_class: int | None) -> Array:
    """Mark the elements whose label is ``ignore_class`` as masked for Keras (jaxce
    already made their loss 0): Keras' ``"sum_over_batch_size"`` then divides by the
    count of the others, and ``"sum"`` is unchanged."""
    if ignore_class is not None:
        set_keras_mask(losses, labels != ignore_class)
    return losses


class JaxceLoss(keras.losses.Loss):
    """A `keras.losses.Loss` whose hyperparameters (the attributes named in
    ``_config``) make up its config with ``name``, ``reduction`` and ``dtype``."""

    _config: tuple[str, ...] = ()

    def __init__(self, *, reduction: str | None, name: str | None, dtype: Dtype):
        # Keras' untyped signature reads as `reduction: str`; None is allowed.
        super().__init__(name=name, reduction=cast(str, reduction), dtype=dtype)
        policy = isinstance(dtype, keras.DTypePolicy)
        self._dtype_config = dtype.name if policy else dtype

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["dtype"] = self._dtype_config
        config.update({key: getattr(self, key) for key in self._config})
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
