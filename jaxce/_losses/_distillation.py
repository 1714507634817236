r"""Knowledge-distillation losses between student and teacher logits.

One family, ``prepare -> formula -> reduce`` like the others: `distillation_loss`
checks its arguments, forms the per-element divergence between the tempered
softmaxes of the teacher and the student (`divergence`), and reduces through
the shared `Reducer`. The per-row formulas and their analytic gradients
(`divergence_parts`, `divergence_grad`) are also used by the fused
`jaxce.linear_distillation_loss`, which never forms all the logits at once.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float

from .._core import (
    Number,
    Reduction,
    ScalarLike,
    as_float_input,
    check_range,
    check_same_shape,
    compute_dtype,
    element_mask,
    make_reducer,
    normalize_axis,
)

Kind = Literal["forward_kl", "reverse_kl", "jsd"]
KINDS = ("forward_kl", "reverse_kl", "jsd")


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The checked divergence of one call (build with `check_divergence`).

    Attributes:
        kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``; a ``"jsd"`` with
            ``beta`` 0 or 1 is already resolved to its KL endpoint.
        beta: the JSD mixture weight of the teacher, in (0, 1) for ``"jsd"``.
        temperature: ``tau > 0``; both logits are divided by it.
    """

    kind: str
    beta: float
    temperature: float


def _concrete(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a Python or NumPy number known at trace time, got "
            f"{value!r}."
        )
    return float(value)


def check_divergence(kind: object, beta: object, temperature: object) -> Divergence:
    """Check ``kind``, ``beta`` and ``temperature`` (trace time)."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    b = _concrete(beta, "beta")
    check_range(b, "beta", 0.0, 1.0)
    tau = _concrete(temperature, "temperature")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"`temperature` must be a finite number > 0, got {tau!r}.")
    if kind == "jsd" and b == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and b == 1.0:
        kind = "reverse_kl"
    return Divergence(str(kind), b, tau)


def _terms(p: Array, log_p: Array, log_q: Array) -> Array:
    """``p (log p - log q)`` with ``0 log 0 = 0`` and finite gradients at ``p = 0``.

    Both logs are replaced by 0 where ``p == 0`` before the product, so neither a
    ``-inf`` log nor its cotangent meets the 0 (no ``0 * inf``).
    """
    keep = p > 0
    zero = jnp.zeros((), p.dtype)
    return p * (jnp.where(keep, log_p, zero) - jnp.where(keep, log_q, zero))


def log_mixture(log_s: Array, log_t: Array, beta: float) -> Array:
    """``log m``, ``m = beta p_t + (1 - beta) p_s``, in log space (``0 < beta < 1``).

    ``-inf`` where both are 0, with a finite (zero) gradient there: `jnp.logaddexp`
    of two ``-inf`` has a NaN gradient, so such classes are replaced first.
    """
    a = log_t + math.log(beta)
    b = log_s + math.log1p(-beta)
    out = (a == -jnp.inf) & (b == -jnp.inf)
    zero = jnp.zeros((), a.dtype)
    m = jnp.logaddexp(jnp.where(out, zero, a), jnp.where(out, zero, b))
    return jnp.where(out, -jnp.inf, m)


def divergence(log_s: Array, log_t: Array, d: Divergence) -> Array:
    """The per-row divergence of student / teacher log-probabilities (classes last)."""
    if d.kind == "forward_kl":
        return jnp.sum(_terms(jnp.exp(log_t), log_t, log_s), axis=-1)
    p_s = jnp.exp(log_s)
    if d.kind == "reverse_kl":
        return jnp.sum(_terms(p_s, log_s, log_t), axis=-1)
    log_m = log_mixture(log_s, log_t, d.beta)
    kl_t = jnp.sum(_terms(jnp.exp(log_t), log_t, log_m), axis=-1)
    kl_s = jnp.sum(_terms(p_s, log_s, log_m), axis=-1)
    return d.beta * kl_t + (1 - d.beta) * kl_s


def divergence_parts(
    log_s: Array, log_t: Array, d: Divergence
) -> tuple[Array, Array | None]:
    """The per-row divergence and (reverse KL, JSD) ``KL(p_s || q)``, ``q`` = ``p_t``
    or ``m``: both sums over the classes, so the parts of a vocabulary split add
    up (``psum``) to the whole rows' values. ``KL(p_s || q)`` is None for forward
    KL (its gradient does not need it)."""
    if d.kind == "forward_kl":
        return divergence(log_s, log_t, d), None
    p_s = jnp.exp(log_s)
    log_q = log_t if d.kind == "reverse_kl" else log_mixture(log_s, log_t, d.beta)
    kl_s = jnp.sum(_terms(p_s, log_s, log_q), axis=-1)
    if d.kind == "reverse_kl":
        return kl_s, kl_s
    kl_t = jnp.sum(_terms(jnp.exp(log_t), log_t, log_q), axis=-1)
    return d.beta * kl_t + (1 - d.beta) * kl_s, kl_s


def divergence_grad(
    log_s: Array, log_t: Array, kl_s: Array | None, d: Divergence
) -> Array:
    r"""The gradient w.r.t. the tempered student logits ``s = z_s / tau``.

    (So ``d/dz_s`` is this divided by ``tau``.) Given the rows' ``kl_s`` of
    `divergence_parts` (of the whole vocabulary; elementwise otherwise):

    - forward KL: ``p_s - p_t``;
    - reverse KL: ``p_s (log p_s - log p_t - KL(p_s || p_t))``;
    - JSD: ``(1 - beta) p_s (log p_s - log m - KL(p_s || m))``.

    Classes with ``p_s = 0`` get 0; shape ``(..., classes)``.
    """
    p_s = jnp.exp(log_s)
    if d.kind == "forward_kl":
        return p_s - jnp.exp(log_t)
    assert kl_s is not None
    log_q = log_t if d.kind == "reverse_kl" else log_mixture(log_s, log_t, d.beta)
    # p_s (log p_s - log q - KL): the ratio terms minus p_s KL (0 where p_s = 0).
    grad = _terms(p_s, log_s, log_q) - p_s * kl_s[..., None]
    if d.kind == "reverse_kl":  # an infinite KL has no gradient: NaN, as autodiff
        return jnp.where(jnp.isfinite(kl_s)[..., None], grad, jnp.nan)
    return (1 - d.beta) * grad


def divergence_and_grad(
    log_s: Array, log_t: Array, d: Divergence
) -> tuple[Array, Array]:
    """The per-row divergence and its gradient w.r.t. the tempered student logits
    (`divergence_parts`, then `divergence_grad`). Returns ``(loss, grad)``,
    shapes ``(...)`` and ``(..., classes)``."""
    loss, kl_s = divergence_parts(log_s, log_t, d)
    return loss, divergence_grad(log_s, log_t, kl_s, d)


def distillation_loss(
    student_logits: Float[ArrayLike, " *_batch _classes"],
    teacher_logits: Float[ArrayLike, " *_batch _classes"],
    *,
    kind: Kind = "forward_kl",
    beta: Number = 0.5,
    temperature: Number = 1.0,
    axis: int = -1,
    where: Bool[ArrayLike, "..."] | None = None,
    weights: Float[ArrayLike, "..."] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
) -> Float[Array, "..."]:
    r"""Distillation loss between a student's and a teacher's logits.

    With temperature $\tau$, $p_s = \operatorname{softmax}(z_s / \tau)$ and
    $p_t = \operatorname{softmax}(z_t / \tau)$ along ``axis`` (computed in log
    space, `jax.nn.log_softmax`), the per-element loss $L$ is

    - ``"forward_kl"``: $\mathrm{KL}(p_t \,\|\, p_s) = \sum_c p_{t,c}
      (\log p_{t,c} - \log p_{s,c})$;
    - ``"reverse_kl"``: $\mathrm{KL}(p_s \,\|\, p_t)$;
    - ``"jsd"``: the generalised Jensen-Shannon divergence with $m = \beta p_t +
      (1 - \beta) p_s$:
      $\beta\, \mathrm{KL}(p_t \,\|\, m) + (1 - \beta)\, \mathrm{KL}(p_s \,\|\, m)$.

    This is Liger Kernel's definition: ``kind="jsd", beta=b`` equals Liger's
    ``LigerJSD(beta=b)`` / ``LigerFusedLinearJSD(jsd_beta=b)`` (student first,
    teacher second). At $\beta = 0$ or $1$ the mixture formula is identically 0
    ($m$ is one of the two distributions), so there, as in Liger, ``"jsd"`` is
    defined as its normalised limit $\lim \mathrm{JSD}_\beta / (\beta (1 -
    \beta))$: forward KL at $\beta = 0$ and reverse KL at $\beta = 1$ (the value
    jumps at the endpoints; near them JSD is about $\beta\,\mathrm{KL}(p_t \,\|\,
    p_s)$ and $(1 - \beta)\, \mathrm{KL}(p_s \,\|\, p_t)$).

    The loss is **not** multiplied by $\tau^2$ (Hinton et al. do, to keep the
    gradient scale; Liger does not): multiply it yourself if you want that.
    The teacher is a constant (`jax.lax.stop_gradient`): it gets no gradient.
    Gradients w.r.t. the student logits, per element:

    - forward KL: $(p_s - p_t) / \tau$;
    - reverse KL: $p_s (\log p_s - \log p_t - \mathrm{KL}(p_s \,\|\, p_t)) / \tau$;
    - JSD: $(1 - \beta)\, p_s (\log p_s - \log m - \mathrm{KL}(p_s \,\|\, m)) / \tau$.

    $0 \log 0 = 0$: a ``-inf`` (or underflowing) teacher logit gives a finite
    forward KL and JSD with finite gradients, and so does a ``-inf`` student
    logit for reverse KL and JSD. Where one distribution is 0 and the other
    is not, the KL that divides by it is $+\infty$ (forward KL for a 0 student
    probability, reverse KL for a 0 teacher probability), its true value.

    Reduced as every jaxce loss (see the semantics page): ``"mean"`` divides by
    the sum of the weights of the present elements (Liger's mean over the
    non-ignored tokens); elements masked by ``where`` are absent (0 in
    ``"none"``, zero gradient); with none present the loss is 0, never NaN.

    Args:
        student_logits: the student's scores, classes along ``axis``.
        teacher_logits: the teacher's scores, the shape of ``student_logits``.
        kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
        beta: $\beta \in [0, 1]$, the teacher's weight in the JSD mixture (a
            Python or NumPy number); only used by ``"jsd"``.
        temperature: $\tau > 0$ (a Python or NumPy number).
        axis: the class axis.
        where: per-element mask of the loss shape (the logits' shape without
            ``axis``): False elements are absent.
        weights: per-element sample weights, broadcast to the loss shape.
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, the loss is
            ``sum(weights * L) / normalizer`` instead (exact gradient
            accumulation over microbatches).
        base: log base of the result (``None``: nats, ``2``: bits).

    Returns:
        The loss: the logits' shape without ``axis`` for ``"none"`` (absent
        elements 0), else a scalar; dtype of ``student_logits``.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> student = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.5, 1.0]])
        >>> teacher = jnp.array([[3.0, 0.0, -1.0], [0.0, 0.0, 2.0]])
        >>> print(jaxce.distillation_loss(student, teacher, reduction="none"))
        [0.21420 0.17446]
        >>> print(jaxce.distillation_loss(student, teacher, kind="reverse_kl"))
        0.26709
        >>> print(jaxce.distillation_loss(
        ...     student, teacher, kind="jsd", beta=0.5, temperature=2.0))
        0.02083

    References:
        Hinton et al., *Distilling the Knowledge in a Neural Network*, 2015,
        https://arxiv.org/abs/1503.02531; Agarwal et al., *On-Policy
        Distillation of Language Models* (generalised JSD), 2024,
        https://arxiv.org/abs/2306.13649; Liger Kernel ``LigerJSD``.
    """
    s = as_float_input(student_logits, "student_logits")
    t = as_float_input(teacher_logits, "teacher_logits")
    check_same_shape(s, t, "student_logits", "teacher_logits")
    d = check_divergence(kind, beta, temperature)
    axis = normalize_axis(axis, s.ndim, "student_logits")
    dtype = compute_dtype(s.dtype, t.dtype)
    zs = jnp.moveaxis(s, axis, -1).astype(dtype)
    zt = jnp.moveaxis(lax.stop_gradient(t), axis, -1).astype(dtype)
    present = element_mask(where, zs.shape[:-1])
    reducer = make_reducer(
        present,
        dtype,
        s.dtype,
        weights=weights,
        reduction=reduction,
        base=base,
        normalizer=normalizer,
    )
    if where is not None:  # absent rows: finite logits, so finite gradients
        zero = jnp.zeros((), dtype)
        zs = jnp.where(present[..., None], zs, zero)
        zt = jnp.where(present[..., None], zt, zero)
    if d.temperature != 1.0:
        zs, zt = zs / d.temperature, zt / d.temperature
    log_s = jax.nn.log_softmax(zs, axis=-1)
    log_t = jax.nn.log_softmax(zt, axis=-1)
    return reducer.reduce(divergence(log_s, log_t, d))
