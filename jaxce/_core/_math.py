r"""Safe elementwise math: finite values and gradients at 0, ``-inf`` and clips.

Each helper here is a formula with its edge cases decided once: ``0 log 0 = 0``,
division by a zero denominator gives 0, ``x ** gamma`` at ``x = 0``, clipping
and its derivative, and both log-sigmoids from one shared exponential.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ._checks import Number, check_base, check_eps, is_static_zero


def safe_xlogy(t: Array, logp: Array) -> Array:
    r"""``t * logp`` with ``0 * log 0 = 0``, and exact partials wherever they exist.

    ``logp`` is a log-probability (``<= 0``, possibly ``-inf``) and ``t`` a
    target weight. The partials are ``d/dlogp = t`` and ``d/dt = logp``, also
    where ``t == 0`` (a soft-label or label-optimisation gradient needs the
    ``log p`` of a class whose target is 0). Only at the corner ``t == 0``,
    ``logp == -inf`` is the value taken as 0 and both partials as 0: there
    ``t log p`` jumps from 0 to ``-inf`` for any ``t > 0``, so no derivative
    exists (the one-sided one, ``log p``, is ``-inf``); the finite choice keeps
    gradients free of NaN (the convention of `xlogy`).
    """
    # One select suffices: at the corner the product is 0 * 0, and neither
    # operand's cotangent involves the infinite logp.
    corner = (t == 0) & (logp == -jnp.inf)
    return t * jnp.where(corner, jnp.zeros((), logp.dtype), logp)


def xlogy(x: Array, y: Array) -> Array:
    """``x * log(y)``, 0 where ``x == 0``, with the exact partial in ``x``.

    ``d/dx = log(y)`` (so ``-inf`` where ``y == 0 < x``) and ``d/dy = x / y``,
    which is 0 where ``x == 0``. At the corner ``x == y == 0`` the value is 0 and
    both partials are 0: there ``x log y`` jumps from 0 to ``-inf`` for any
    ``x > 0``, so no derivative exists and the finite one is taken.
    `safe_xlogy` is the same on a log-probability ``y = log p``.
    """
    corner = (x == 0) & (y == 0)
    return x * jnp.log(jnp.where(corner, jnp.ones((), y.dtype), y))


def safe_divide(num: Array, den: Array) -> Array:
    """``num / den``, and exactly 0 (with zero gradient) where ``den == 0``."""
    zero = den == 0
    return jnp.where(zero, jnp.zeros((), num.dtype), num / jnp.where(zero, 1, den))


def safe_log(x: Array) -> Array:
    """``log x`` with ``log 0 = -inf`` and a finite gradient there."""
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1)), -jnp.inf)


def safe_power(x: Array, gamma) -> Array:
    """``x ** gamma`` for ``x >= 0`` with a finite (zero) gradient at ``x = 0``."""
    if is_static_zero(gamma):
        return jnp.ones_like(x)
    pos = x > 0
    return jnp.where(pos, jnp.exp(gamma * jnp.log(jnp.where(pos, x, 1))), 0)


def power_from_log(log_x: Array, gamma) -> Array:
    """``exp(gamma * log_x)``: ``x ** gamma`` from ``log x`` (``-inf`` gives 0).

    Working from ``log x`` keeps first *and* second derivatives finite when ``x``
    underflows (saturated logits), where ``x ** gamma`` through ``log(x)`` would
    divide by ``x**2``.
    """
    if is_static_zero(gamma):
        return jnp.ones_like(log_x)
    finite = log_x > -jnp.inf
    safe = jnp.where(finite, log_x, 0)
    return jnp.where(finite, jnp.exp(gamma * safe), 0)


def log_sigmoid_pair(z: Array) -> tuple[Array, Array]:
    r"""``(log sigmoid(z), log sigmoid(-z))`` from one shared ``exp(-|z|)``.

    Equal to `jax.nn.log_sigmoid` of ``z`` and ``-z``; one ``exp`` and one
    ``log1p`` serve both (XLA fuses them into one pass). ``|z|`` is written
    ``where(z >= 0, z, -z)``: its derivative at 0 is 1 rather than
    ``sign(0) = 0``, which keeps first *and* second derivatives exact at
    ``z = 0``. At ``z = +-inf`` the values are exact and the derivatives finite.
    """
    nonneg = z >= 0
    log1p_e = jnp.log1p(jnp.exp(-jnp.where(nonneg, z, -z)))
    zero = jnp.zeros((), z.dtype)
    return (
        jnp.where(nonneg, zero, z) - log1p_e,
        -jnp.where(nonneg, z, zero) - log1p_e,
    )


def softmax_and_lse(z: Array) -> tuple[Array, Array]:
    """``softmax(z)`` and ``logsumexp(z)`` (kept dims) along the last axis.

    One max and one sum of exponentials, as `jax.nn.softmax` (``exp(z - max) /
    sum``: accurate where a probability is close to 1).
    """
    m = jnp.max(z, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), z.dtype))
    e = jnp.exp(z - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / total, m + jnp.log(total)


def shifted_log_softmax(z: Array) -> tuple[Array, Array]:
    r"""``(z - m, log sum_c exp(z_c - m))`` along the last axis, ``m = max z``.

    ``log softmax(z) = (z - m) - log_norm`` and ``logsumexp(z) = m + log_norm``.
    Two roundings are avoided, so that every cross-entropy built from these is
    exact to a few ulps *of the loss*, at any logit offset and confidence:

    - the difference of logits is formed after the shift: ``lse - z_y`` as
      ``log_norm - (z_y - m)`` (``logsumexp(z) - z_y`` loses ulps of ``|z|``:
      ``1e5`` in float32 is 1/128 apart from its neighbours; ties at ``3e38``
      give ``log 2``, not 0);
    - ``log_norm = log1p(sum of the terms but one maximum's 1)``, not
      ``log(sum)``, which rounds ``1 + 1e-7`` to 1 (a confident prediction's
      loss of ``1e-7`` would come out as 0 or ``1.2e-7``).

    ``m`` is a constant for differentiation (the derivative is the same) and 0
    where it is not finite (rows of ``-inf``).
    """
    m = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), z.dtype))
    shifted = z - m
    e = jnp.exp(shifted)
    # rest = sum(e) - 1 without rounding 1 + rest: the n maxima (shifted == 0)
    # contribute expm1(0) = 0 and n - 1 is added apart. The identity holds for
    # any n: should XLA recompute z in another fusion and round it differently
    # (no entry exactly 0, n = 0), this is sum(e) - 1 as it stands. expm1 keeps
    # each maximum's derivative e. Two independent sums: one pass.
    is_max = shifted == 0
    n = jnp.sum(is_max, axis=-1).astype(z.dtype)
    kept = jnp.where(is_max, jnp.expm1(shifted), e)
    rest = jnp.sum(kept, axis=-1) + (n - 1)
    return shifted, jnp.log1p(rest)


def resolve_eps(eps: Number | None, dtype) -> float:
    """``None`` means the machine epsilon of the compute dtype."""
    check_eps(eps)
    return float(jnp.finfo(dtype).eps) if eps is None else float(eps)


def clip_bounds(eps: float, dtype) -> tuple[float, float]:
    """``(eps, 1 - eps)`` for clipping probabilities, with ``1 - eps`` kept below 1.

    ``1 - eps`` rounds to 1 in the compute dtype when ``eps`` is tiny (``1e-15``
    in float32); the largest number below 1 is used then, so ``log(1 - p)`` stays
    finite.
    """
    return eps, min(1.0 - eps, 1.0 - float(jnp.finfo(dtype).epsneg))


def clip_derivative(x: Array, lo: float, hi: float) -> Array:
    """Derivative of ``jnp.clip(x, lo, hi)``: 1 inside, 0 outside, 1/2 on a bound.

    The 1/2 on the bounds is JAX's convention for ``maximum``/``minimum`` ties (the
    midpoint of the one-sided derivatives), so closed forms match autodiff exactly.
    """
    one = jnp.ones((), x.dtype)
    half = jnp.asarray(0.5, x.dtype)
    zero = jnp.zeros((), x.dtype)
    inside = jnp.where((x > lo) & (x < hi), one, zero)
    return jnp.where((x == lo) | (x == hi), half, inside)


def log_base_factor(base: Number | None) -> float:
    """``1 / ln(base)`` (1 for ``None``, nats)."""
    check_base(base)
    return 1.0 if base is None else 1.0 / math.log(base)


def out_of_range(labels: Array, v: int) -> Array:
    """``labels < 0 or labels >= v`` (elementwise; no overflow for narrow ints)."""
    info = jnp.iinfo(labels.dtype)
    low = labels < 0 if info.min < 0 else jnp.zeros(labels.shape, bool)
    return low | (labels >= v) if v <= info.max else low


def nan_where(invalid: Array | None, x: Array) -> Array:
    """``x`` times NaN where ``invalid`` (broadcast on trailing axes).

    Multiplying (rather than selecting) makes the value *and* every gradient
    that flows through it NaN.
    """
    if invalid is None:
        return x
    while invalid.ndim < x.ndim:
        invalid = invalid[..., None]
    one = jnp.ones((), x.dtype)
    return x * jnp.where(invalid, jnp.asarray(jnp.nan, x.dtype), one)
