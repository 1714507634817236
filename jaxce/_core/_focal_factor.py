r"""The modulating factor ``(1 - p_t) ** gamma`` of the sigmoid focal loss, with
exact derivatives in the label.

With ``a = log sigmoid(-z)``, ``b = log sigmoid(z)`` and a label ``y`` in
``[0, 1]``, ``q = 1 - p_t = y e^a + (1 - y) e^b`` is formed in log space, as
``logaddexp(log y + a, log(1 - y) + b)``: accurate when ``q`` underflows (the
saturated logits the focal term exists for), with finite first and second
derivatives in ``a`` and ``b``. But ``q`` is linear in ``y``, and in log space
its derivative at ``y = 0`` is ``e^a / q = (1 / y) * (y e^a / q)``: an infinite
factor times a zero one, which autodiff turns into 0 or NaN. `focal_factor`
keeps the log-space value and gives the exact partials (a custom JVP):

    dF/dy     = gamma q^(gamma - 1) (e^a - e^b)
    dF/da, db = the log-space formula's (autodiff of it)
    dF/dgamma = F log q            (0 where q = 0)

``q^(gamma - 1) e^a`` is formed as ``exp(a + (gamma - 1) log q)``, finite for
``gamma >= 1`` even where ``F`` underflows to 0 (``F * dlog q / dy`` would be
``0 * inf``). For ``gamma < 1`` the label derivative is genuinely unbounded
where ``q -> 0`` and may overflow to ``inf``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array

from ._checks import is_static_zero
from ._math import power_from_log, safe_log


def log_one_minus_pt(y: Array, log_p: Array, log_not_p: Array) -> Array:
    """``log q = log(y sigmoid(-z) + (1 - y) sigmoid(z))`` in log space.

    Each term is floored at ``-1e30`` (not ``-inf``) so that ``logaddexp``'s
    gradient stays finite when a term vanishes.
    """
    floor = jnp.asarray(-1e30, log_p.dtype)
    return jnp.logaddexp(
        jnp.maximum(safe_log(y) + log_not_p, floor),
        jnp.maximum(safe_log(1 - y) + log_p, floor),
    )


def _plain(y: Array, a: Array, b: Array, gamma: Array) -> Array:
    return power_from_log(log_one_minus_pt(y, b, a), gamma)


@jax.custom_jvp
def _factor(y: Array, a: Array, b: Array, gamma: Array) -> Array:
    return _plain(y, a, b, gamma)


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _factor_jvp(primals, tangents):
    y, a, b, gamma = primals
    ty, ta, tb, tg = tangents
    if _is_zero(ta) and _is_zero(tb):
        out = _plain(y, a, b, gamma)
        dout = jnp.zeros_like(out)
    else:
        ta = jnp.zeros_like(a) if _is_zero(ta) else ta
        tb = jnp.zeros_like(b) if _is_zero(tb) else tb
        out, dout = jax.jvp(lambda a, b: _plain(y, a, b, gamma), (a, b), (ta, tb))
    if not (_is_zero(ty) and _is_zero(tg)):
        lq = log_one_minus_pt(y, b, a)
        if not _is_zero(ty):
            e = (gamma - 1) * lq
            dout = dout + gamma * (jnp.exp(a + e) - jnp.exp(b + e)) * ty
        if not _is_zero(tg):
            f_log_q = jnp.where(lq > -jnp.inf, out * lq, jnp.zeros((), out.dtype))
            dout = dout + f_log_q * tg
    return out, dout


_factor.defjvp(_factor_jvp, symbolic_zeros=True)


def focal_factor(y: Array, log_p: Array, log_not_p: Array, gamma) -> Array:
    r"""``(1 - p_t) ** gamma`` with ``p_t = y sigmoid(z) + (1 - y) sigmoid(-z)``.

    ``log_p`` and ``log_not_p`` are ``log sigmoid(z)`` and ``log sigmoid(-z)``.
    Exact derivatives in ``y`` (at 0 and 1 too), ``z`` and ``gamma``; see the
    module docstring. ``gamma`` statically 0 gives ones.
    """
    if is_static_zero(gamma):
        return jnp.ones_like(log_p)
    g = jnp.asarray(gamma, log_p.dtype)
    return _factor(y, log_not_p, log_p, g)
