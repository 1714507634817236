"""`jaxce.save` / `jaxce.load`: a JSON line of hyperparameters + Equinox leaves.

The file is what Equinox's serialisation guide recommends: one line of JSON
(``{"format": ..., "class": ..., "hyperparameters": {...}, "leaves": [...]}``)
followed by `equinox.tree_serialise_leaves` of the model, and the CRC-32 trailer
of `._files` that covers every byte (the checkpoints' integrity check). The
hyperparameters are the model's static dataclass fields (``in_features``,
``num_classes``, ``width``, ``depth`` for the jaxce models). Files of format
``jaxce.model/1`` (no trailer) still load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import equinox as eqx
import jax

from ..models import LogisticRegression, MLPClassifier, SoftmaxRegression
from ._files import (
    deserialise_leaves,
    read_file,
    serialise_leaves,
    tree_signature,
    write_file,
)

FORMAT = "jaxce.model/2"
LEGACY_FORMATS = ("jaxce.model/1",)  # before the CRC trailer: read unchecked

# The jaxce models are recorded by their public name; files written by jaxce 0.1,
# which recorded the private module the classes then lived in, still load.
_PUBLIC_NAMES: dict[type, str] = {
    cls: f"jaxce.models.{cls.__name__}"
    for cls in (LogisticRegression, SoftmaxRegression, MLPClassifier)
}
_OLD_NAMES = {f"jaxce._models.{cls.__name__}": n for cls, n in _PUBLIC_NAMES.items()}


def hyperparameters(model: eqx.Module) -> dict[str, Any]:
    """The static, JSON-serialisable dataclass fields of ``model``."""
    out = {}
    for field in dataclasses.fields(model):
        if field.metadata.get("static", False):
            value = getattr(model, field.name)
            try:
                json.dumps(value)
            except TypeError:
                continue
            out[field.name] = value
    return out


def _is_leaf_array(x: Any) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _class_name(cls: type) -> str:
    return _PUBLIC_NAMES.get(cls, f"{cls.__module__}.{cls.__qualname__}")


def save(path: str | os.PathLike, model: eqx.Module) -> None:
    """Save ``model`` to ``path`` (atomically: temporary file, then `os.replace`).

    Args:
        path: file to write (parent directories are created).
        model: an `equinox.Module`, e.g. a `jaxce.models` classifier.

    Examples:
        >>> import os, tempfile, jax, jaxce
        >>> model = jaxce.models.MLPClassifier(4, 3, width=8, depth=1,
        ...                                    key=jax.random.key(0))
        >>> path = os.path.join(tempfile.mkdtemp(), "mlp.eqx")
        >>> jaxce.save(path, model)
        >>> back = jaxce.load(path, jaxce.models.MLPClassifier)
        >>> same = back.layers[0].weight == model.layers[0].weight
        >>> print(back.width, bool(same.all()))
        8 True
    """
    header = {
        "format": FORMAT,
        "class": _class_name(type(model)),
        "hyperparameters": hyperparameters(model),
        "leaves": tree_signature(eqx.filter(model, eqx.is_array))["leaves"],
    }
    write_file(path, header, serialise_leaves(model))


def load(path: str | os.PathLike, like: eqx.Module | type) -> Any:
    """Load a model saved by `jaxce.save`.

    Args:
        path: the file.
        like: a model of the same class and hyperparameters (its values are
            ignored), or the class itself, which is then rebuilt from the saved
            hyperparameters as ``like(**hyperparameters, key=...)`` (the jaxce
            models; any class whose constructor takes its static fields and a
            ``key``).

    Returns:
        The saved model, leaf for leaf.

    Raises:
        ValueError: the file is not a jaxce model file, is corrupt (its CRC-32
            does not match: any flipped bit, truncation or appended byte), or
            its class, hyperparameters or leaf shapes differ from ``like``.

    Examples:
        >>> import os, tempfile, jax, jax.numpy as jnp, jaxce
        >>> model = jaxce.models.SoftmaxRegression(2, 3, key=jax.random.key(0))
        >>> model = jax.tree.map(lambda a: jnp.arange(a.size, dtype=a.dtype)
        ...                      .reshape(a.shape), model)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "softmax.eqx")
        ...     jaxce.save(path, model)
        ...     back = jaxce.load(path, jaxce.models.SoftmaxRegression)
        ...     like = jaxce.load(path, jaxce.models.SoftmaxRegression(
        ...         2, 3, key=jax.random.key(1)))
        >>> print(type(back).__name__, back.num_classes, back.in_features)
        SoftmaxRegression 3 2
        >>> print(back.weight, back.bias)
        [[0.00000 1.00000]
         [2.00000 3.00000]
         [4.00000 5.00000]] [0.00000 1.00000 2.00000]
        >>> print(bool((like.weight == model.weight).all()))
        True
    """
    name = os.fspath(path)
    header, body = read_file(
        path, FORMAT, ValueError, what="a model saved by jaxce.save",
        unchecked=LEGACY_FORMATS,
    )  # fmt: skip
    saved_class = str(header.get("class"))
    saved_class = _OLD_NAMES.get(saved_class, saved_class)
    hparams = header.get("hyperparameters")
    if not isinstance(hparams, dict) or not isinstance(header.get("leaves"), list):
        raise ValueError(f"{name!r} has an incomplete header; it is no jaxce model.")
    template: Any = like
    if isinstance(like, type):
        if saved_class != _class_name(like):
            raise ValueError(
                f"{name!r} holds a different model: its class is {saved_class}, "
                f"`like` is {_class_name(like)}."
            )
        cls: Any = like
        try:
            template = eqx.filter_eval_shape(
                lambda: cls(**hparams, key=jax.random.key(0))
            )
        except TypeError as err:
            raise ValueError(
                f"{name!r}: {_class_name(like)} cannot be rebuilt from the saved "
                f"hyperparameters {hparams}: {err}"
            ) from err
    saved = (saved_class, hparams, header["leaves"])
    arrays = eqx.filter(template, _is_leaf_array)
    ours = (
        _class_name(type(template)),
        hyperparameters(template),
        [
            [list(a.shape), str(a.dtype)]
            for a in jax.tree_util.tree_leaves(arrays)
            if hasattr(a, "shape")
        ],
    )
    for what, a, b in zip(("class", "hyperparameters", "leaves"), saved, ours):
        if a != b:
            raise ValueError(
                f"{name!r} holds a different model: {what} {a} in the file, {b} "
                "in `like`."
            )
    try:
        return deserialise_leaves(body, template)
    except Exception as err:  # truncated or corrupt payloads
        raise ValueError(f"{name!r} could not be read: {err}") from err
