"""Run-time value checks (labels in range, probabilities in [0, 1], NaN)."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._core import check_normalizer, normalize_axis

Kind = Literal["logits", "probs", "binary_logits", "binary_probs"]
KINDS = ("logits", "probs", "binary_logits", "binary_probs")


def validate(
    inputs: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    kind: Kind = "logits",
    axis: int = -1,
    ignore_index: int | None = None,
    atol: float = 1e-3,
    normalizer: ArrayLike | None = None,
) -> Array | tuple[Array, ...]:
    r"""Check the values of a loss's inputs at run time; pass them through.

    Shapes and dtypes are checked at trace time by every loss. What only exists
    at run time is checked here with `equinox.error_if`, which raises (also under
    `jax.jit`) instead of letting a bad value become a wrong number:

    - ``inputs`` contain no NaN;
    - ``kind="probs"``: values in $[0, 1]$ and each slice along ``axis`` sums to
      1 within ``atol`` (jaxce never renormalises rows);
      ``kind="binary_probs"``: values in $[0, 1]$;
    - integer ``labels``: in ``[0, num_classes)`` or equal to ``ignore_index``;
    - float ``labels`` (targets, binary labels): no NaN, values in $[0, 1]$;
      categorical targets also sum to 1 along ``axis``;
    - ``normalizer``: finite and $> 0$ (a loss checks a Python number or a
      concrete array itself, at trace time; a traced one, e.g. a microbatch
      total computed inside `jax.jit`, only here).

    Args:
        inputs: logits or probabilities, as passed to a loss.
        labels: integer labels or float targets / binary labels, or ``None``.
        kind: ``"logits"``, ``"probs"``, ``"binary_logits"`` or ``"binary_probs"``.
        axis: the class axis (categorical kinds).
        ignore_index: label value allowed outside the class range.
        atol: tolerance for "sums to 1".
        normalizer: the ``normalizer`` a loss will be given, or ``None``.

    Returns:
        ``inputs``, then ``labels`` and ``normalizer`` when given (one array for
        ``inputs`` alone, else a tuple in that order), unchanged but tied to the
        checks: use the returned arrays.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> logits, labels = jaxce.validate(jnp.zeros((2, 3)), jnp.array([0, 2]))
        >>> jaxce.validate(jnp.zeros((2, 3)), jnp.array([0, 3]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        EquinoxRuntimeError: ...`labels` out of range: ... [0, 3)...

        A traced ``normalizer`` (e.g. a microbatch's total weight):

        >>> import equinox as eqx
        >>> @eqx.filter_jit
        ... def loss(z, y, total):
        ...     z, y, total = jaxce.validate(z, y, normalizer=total)
        ...     return jaxce.sparse_softmax_cross_entropy(z, y, normalizer=total)
        >>> z, y = jnp.zeros((2, 3)), jnp.array([0, 2])
        >>> print(loss(z, y, jnp.asarray(4.0)))
        0.54931
        >>> loss(z, y, jnp.asarray(0.0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        EquinoxRuntimeError: ...`normalizer` must be finite and > 0...
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    x = jnp.asarray(inputs)
    binary = kind.startswith("binary")
    x = eqx.error_if(x, jnp.any(jnp.isnan(x)), "`inputs` contain NaN.")
    if kind in ("probs", "binary_probs"):
        x = eqx.error_if(
            x, jnp.any((x < 0) | (x > 1)), "`inputs` probabilities outside [0, 1]."
        )
    if kind == "probs":
        ax = normalize_axis(axis, x.ndim, "inputs")
        bad = jnp.abs(jnp.sum(x, axis=ax) - 1) > atol
        x = eqx.error_if(
            x, jnp.any(bad), f"`inputs` rows do not sum to 1 along axis {axis}."
        )
    out = [x]
    if labels is not None:
        out.append(
            _check_labels(x, jnp.asarray(labels), binary, axis, ignore_index, atol)
        )
    if normalizer is not None:
        out.append(_check_normalizer(normalizer))
    return out[0] if len(out) == 1 else tuple(out)


def _check_labels(
    x: Array, y: Array, binary: bool, axis: int, ignore_index: int | None, atol: float
) -> Array:
    if jnp.issubdtype(y.dtype, jnp.integer) and not binary:
        k = x.shape[normalize_axis(axis, x.ndim, "inputs")]
        ok = (y >= 0) & (y < k)
        if ignore_index is not None:
            ok = ok | (y == ignore_index)
        allowed = "" if ignore_index is None else f" or equal {ignore_index}"
        return eqx.error_if(
            y,
            jnp.any(~ok),
            f"`labels` out of range: every label must be in [0, {k}){allowed}.",
        )
    yf = y.astype(jnp.float32) if not jnp.issubdtype(y.dtype, jnp.floating) else y
    y = eqx.error_if(y, jnp.any(jnp.isnan(yf)), "`labels` contain NaN.")
    y = eqx.error_if(y, jnp.any((yf < 0) | (yf > 1)), "`labels` outside [0, 1].")
    if not binary:
        ax = normalize_axis(axis, yf.ndim, "labels")
        bad = jnp.abs(jnp.sum(yf, axis=ax) - 1) > atol
        y = eqx.error_if(
            y, jnp.any(bad), f"`labels` targets do not sum to 1 along axis {axis}."
        )
    return y


def _check_normalizer(normalizer: ArrayLike) -> Array:
    """The dtype and shape at trace time (`check_normalizer`), the value here."""
    check_normalizer(normalizer, "sum")
    z = jnp.asarray(normalizer)
    zf = z.astype(jnp.float32) if not jnp.issubdtype(z.dtype, jnp.floating) else z
    bad = ~(jnp.isfinite(zf) & (zf > 0))
    return eqx.error_if(z, bad, "`normalizer` must be finite and > 0.")
