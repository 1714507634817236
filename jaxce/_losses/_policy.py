"""`policy_loss`: the GRPO family of policy-gradient losses on per-token log-probs.

The semantics are Liger-Kernel 0.8.5's ``LigerFusedLinearGRPOLoss`` (itself
TRL's ``GRPOTrainer``), option for option. The per-token terms
(`token_terms`), the normalisation weights (`norm_weights`) and the metrics
(`metrics_of`) are shared with the fused head `jaxce.linear_policy_loss`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .._core import Number, check_normalizer, compute_dtype
from ._policy_options import LOSS_TYPES, PolicyOptions, check_policy_options

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
_NORMALIZED = ("dapo", "cispo", "vespo")  # Liger's num_items_in_batch applies
__all__ = ["LOSS_TYPES", "PolicyOptions", "check_policy_options", "policy_loss"]


class PolicyMetrics(NamedTuple):
    """Scalar metrics of a policy loss (means over the present tokens).

    Attributes:
        clip_ratio: fraction of tokens clipped in the region that matters
            (ratio below ``1 - epsilon_low`` with a negative advantage, or above
            the upper bound with a positive one): Liger's metric, TRL's
            ``clip_ratio/region_mean``.
        clip_ratio_low: ratio below ``1 - epsilon_low`` and advantage < 0
            (TRL ``clip_ratio/low_mean``).
        clip_ratio_high: ratio above ``1 + epsilon_high`` (``cispo``:
            ``epsilon_high``) and advantage > 0 (TRL ``clip_ratio/high_mean``).
        kl: the k3 estimate of KL(policy || reference) (0 without
            ``ref_logprob``).
        ratio: the importance ratio ``exp(logprob - old_logprob)`` (the
            sequence's ratio at ``importance_sampling_level="sequence"``).
        entropy: the policy's entropy (0 when not given / not computed).
    """

    clip_ratio: Array
    clip_ratio_low: Array
    clip_ratio_high: Array
    kl: Array
    ratio: Array
    entropy: Array


def token_terms(logp, old, adv, ref, isr, opt: PolicyOptions, log_w=None, phi=None):
    """Per-token ``(loss, ratio, clipped_low, clipped_high, kl)`` before the
    normalisation (elementwise; ``log_w`` the sequence's log-ratio, ``phi``
    VESPO's detached weight, both broadcast against ``logp``)."""
    lt = opt.loss_type
    log_w = logp - old if log_w is None else log_w
    coef1 = jnp.exp(log_w)
    false = jnp.zeros(coef1.shape, bool)
    if lt == "cispo":
        coef2 = jax.lax.stop_gradient(jnp.minimum(coef1, opt.epsilon_high))
        low, high = false, coef1 > opt.epsilon_high
        per = -coef2 * adv * logp
    elif lt == "sapo":
        low = high = false
        tau = jnp.where(adv > 0, opt.sapo_temperature_pos, opt.sapo_temperature_neg)
        per = -jax.nn.sigmoid(tau * (coef1 - 1)) * 4 / tau * adv
    elif lt == "vespo":
        assert phi is not None  # vespo_phi of the sequence, from the caller
        low = high = false
        per = -phi * adv * logp
    else:
        lo, hi = 1 - opt.epsilon_low, 1 + opt.epsilon_high
        coef2 = jnp.clip(coef1, lo, hi)
        low, high = coef1 < lo, coef1 > hi
        c1 = coef1 if opt.delta is None else jnp.minimum(coef1, opt.delta)
        per = -jnp.minimum(c1 * adv, coef2 * adv)
    if isr is not None and lt != "vespo":
        per = per * isr
    kl = jnp.zeros_like(per)
    if ref is not None:
        kl = jnp.exp(ref - logp) - (ref - logp) - 1
        if opt.use_bias_correction_kl:
            kl = kl * coef1
        if opt.beta != 0:
            per = per + opt.beta * kl
    clipped_low, clipped_high = low & (adv < 0), high & (adv > 0)
    return per, jnp.broadcast_to(coef1, per.shape), clipped_low, clipped_high, kl


def norm_weights(m: Array, opt: PolicyOptions, normalizer) -> Array:
    """``(B, T)`` weights ``w`` (0 where absent) with ``loss = sum w * per``."""
    b, t = m.shape
    lens = jnp.sum(m, axis=-1, keepdims=True)
    lt = opt.loss_type
    if lt in ("grpo", "sapo"):
        return m / (jnp.maximum(lens, 1) * b)
    if lt == "dr_grpo":
        assert opt.max_completion_length is not None
        return m / (b * opt.max_completion_length)
    if lt == "luspo":  # Liger / TRL also weight absent tokens' terms; jaxce doesn't
        return m * lens / (b * t)
    if lt in _NORMALIZED and normalizer is not None:
        return m / jnp.maximum(jnp.asarray(normalizer, m.dtype), 1)
    return m / jnp.maximum(jnp.sum(m), 1)


def vespo_phi(log_ratio, m, adv, isr, opt: PolicyOptions) -> Array:
    """VESPO's gamma weight ``phi(w)`` of each sequence ``(B, 1)``, detached."""
    k_pos, l_pos, k_neg, l_neg = opt.vespo
    low = math.log(1e-8)
    seq = jnp.sum(jnp.clip(log_ratio, -20.0, 20.0) * m, axis=-1, keepdims=True)
    if isr is not None:
        isr_t = jnp.broadcast_to(isr, m.shape) if isr.shape[-1] == 1 else isr
        if isr.shape[-1] == 1:  # Liger sums the (B, 1) ratio's log once
            seq = seq + jnp.clip(jnp.log(isr), low, 20.0)
        else:
            seq = seq + jnp.sum(jnp.clip(jnp.log(isr_t), low, 20.0), -1, keepdims=True)
    log_w = jnp.clip(seq, low, 20.0)
    nonneg = adv >= 0
    k = jnp.where(nonneg, k_pos, k_neg)
    lam = jnp.maximum(jnp.where(nonneg, l_pos, l_neg), 1e-4)
    phi = jnp.exp(lam + k * log_w - lam * jnp.exp(log_w))
    phi = jnp.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)
    return jax.lax.stop_gradient(phi)


def metrics_of(ratio, low, high, kl, m, entropy=None) -> PolicyMetrics:
    """Token means over the present tokens (``m``: float mask)."""
    count = jnp.maximum(jnp.sum(m), 1)
    mean = lambda x: jnp.sum(jnp.where(m > 0, x.astype(m.dtype), 0) * m) / count  # noqa: E731
    zero = jnp.zeros((), m.dtype)
    return PolicyMetrics(
        mean(low | high),
        mean(low),
        mean(high),
        mean(kl),
        mean(ratio),
        zero if entropy is None else mean(entropy),
    )


def _as(x, name: str, shape: tuple, dtype) -> Array | None:
    if x is None:
        return None
    a = jnp.asarray(x)
    if a.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {a.shape}.")
    return a.astype(dtype)


def check_policy_normalizer(normalizer, opt: PolicyOptions) -> None:
    """``normalizer`` (Liger's ``num_items_in_batch``): None, or a finite real
    number > 0, for the loss types that divide by a token count."""
    check_normalizer(normalizer, "sum")
    if normalizer is not None and opt.loss_type not in _NORMALIZED:
        raise ValueError(
            f"`normalizer` applies to loss_type in {_NORMALIZED}, not "
            f"{opt.loss_type!r}."
        )


def prepare_policy_arrays(logprob_shape, dtype, advantages, where, old_logprob,
                          ref_logprob, is_ratio, entropy=None, beta=0.0):  # fmt: skip
    """Checked ``(adv (B, 1), m (B, T), old, ref, isr, entropy)``."""
    if len(logprob_shape) != 2:
        raise ValueError(
            f"`logprob` must be (B, T) per-token log-probs, got shape {logprob_shape}."
        )
    b, t = logprob_shape
    adv = _as(advantages, "advantages", (b,), dtype)
    if where is None:
        raise TypeError("`where` (the (B, T) completion mask) is required.")
    w = jnp.asarray(where)
    if w.shape != (b, t):
        raise ValueError(f"`where` must have shape {(b, t)}, got {w.shape}.")
    if w.dtype != jnp.bool_:
        raise TypeError(f"`where` must be boolean, got dtype {w.dtype}.")
    old = _as(old_logprob, "old_logprob", (b, t), dtype)
    ref = _as(ref_logprob, "ref_logprob", (b, t), dtype)
    if beta > 0 and ref is None:
        raise ValueError("`beta` > 0 (the KL penalty) needs `ref_logprob`.")
    isr = None
    if is_ratio is not None:
        isr = jnp.asarray(is_ratio).astype(dtype)
        if isr.shape == (b,):
            isr = isr[:, None]
        if isr.shape not in ((b, 1), (b, t)):
            raise ValueError(
                f"`is_ratio` must have shape {(b,)}, {(b, 1)} or {(b, t)}, got "
                f"{jnp.shape(is_ratio)}."
            )
    ent = _as(entropy, "entropy", (b, t), dtype)
    assert adv is not None
    # Data, not parameters (as in Liger and TRL): no gradient flows to them.
    adv, old, ref, isr = jax.lax.stop_gradient((adv, old, ref, isr))
    return adv[:, None], w.astype(dtype), old, ref, isr, ent


def policy_loss(
    logprob: Float[ArrayLike, "_batch _time"],
    advantages: Float[ArrayLike, " _batch"],
    *,
    where: Bool[ArrayLike, "_batch _time"],
    old_logprob: Float[ArrayLike, "_batch _time"] | None = None,
    ref_logprob: Float[ArrayLike, "_batch _time"] | None = None,
    loss_type: LossType = "dapo",
    epsilon_low: Number = 0.2,
    epsilon_high: Number = 0.2,
    beta: Number = 0.0,
    delta: Number | None = None,
    importance_sampling_level: Literal["token", "sequence"] = "token",
    max_completion_length: int | None = None,
    normalizer: ArrayLike | None = None,
    is_ratio: Float[ArrayLike, "..."] | None = None,
    entropy: Float[ArrayLike, "_batch _time"] | None = None,
    entropy_coef: Number = 0.0,
    sapo_temperature_pos: Number = 1.0,
    sapo_temperature_neg: Number = 1.05,
    use_bias_correction_kl: bool = False,
    vespo_k_pos: Number = 2.0,
    vespo_lambda_pos: Number = 3.0,
    vespo_k_neg: Number = 3.0,
    vespo_lambda_neg: Number = 2.0,
) -> tuple[Float[Array, ""], PolicyMetrics]:
    r"""GRPO-family policy loss on per-token log-probs, and its metrics.

    Liger-Kernel 0.8.5 ``LigerFusedLinearGRPOLoss`` / TRL ``GRPOTrainer``
    semantics. With ratio $r = e^{\log\pi - \log\pi_\text{old}}$ (per token; at
    ``importance_sampling_level="sequence"`` (GSPO) the exponent is the
    sequence's mean log-ratio) and advantage $A$ of the sequence, the per-token
    term is $-\min(r A, \operatorname{clip}(r, 1-\epsilon_l, 1+\epsilon_h) A)$
    (``delta``: $r$ capped at $\delta$ first, INTELLECT-2); ``"cispo"``:
    $-\operatorname{sg}(\min(r, \epsilon_h)) A \log\pi$; ``"sapo"``:
    $-\frac{4}{\tau}\sigma(\tau(r - 1)) A$ ($\tau$ by the sign of $A$);
    ``"vespo"``: $-\operatorname{sg}(\phi(w)) A \log\pi$ with VESPO's gamma
    weight of the sequence ratio. Times ``is_ratio`` (vLLM's importance
    ratio, Liger's ``vllm_is_ratio``), plus $\beta$ times the k3 KL
    $e^{\log\pi_\text{ref} - \log\pi} - (\log\pi_\text{ref} - \log\pi) - 1$.
    Reduced over the present tokens by ``loss_type``: ``"grpo"`` / ``"sapo"``
    each sequence's mean, averaged over the ``B`` sequences; ``"bnpo"`` /
    ``"dapo"`` / ``"cispo"`` / ``"vespo"`` the token mean (``normalizer``:
    divide by it instead, Liger's ``num_items_in_batch``, for the last
    three); ``"dr_grpo"`` the sum over ``B * max_completion_length``;
    ``"luspo"`` each token weighted by its sequence's length, over ``B * T``
    (Liger / TRL also count the absent tokens' terms of a partly present
    sequence; jaxce counts present tokens only).

    Entropy bonus (TRL #5597 / #6140): ``loss -= entropy_coef * mean(H)``
    with the mean over all present tokens of the batch, for every
    ``loss_type`` (not per sequence).

    Args:
        logprob: ``(B, T)`` log-probs of the sampled tokens under the policy.
        advantages: ``(B,)`` advantages.
        where: ``(B, T)`` boolean: the completion tokens (Liger's
            ``attention_mask``). A sequence with none contributes 0.
        old_logprob: ``(B, T)`` log-probs under the sampling policy; None:
            ``stop_gradient(logprob)`` (on-policy, ratio 1).
        ref_logprob: ``(B, T)`` reference log-probs (needed for ``beta > 0``).
        loss_type: see above.
        epsilon_low: clip range (``cispo``: ``epsilon_high`` is
            the cap itself, e.g. 5.0; ``epsilon_low`` unused).
        epsilon_high: see ``epsilon_low``.
        beta: KL weight (Liger's default is 0.04; TRL's and jaxce's 0).
        delta: upper cap of the ratio (two-sided clipping) or None.
        importance_sampling_level: ``"token"`` or ``"sequence"`` (GSPO; not
            for ``cispo`` / ``sapo`` / ``vespo``).
        max_completion_length: needed by ``"dr_grpo"``.
        normalizer: token count to divide by for ``dapo`` / ``cispo`` /
            ``vespo`` (floored at 1).
        is_ratio: vLLM importance-sampling ratio, ``(B,)``, ``(B, 1)`` or
            ``(B, T)`` (a constant).
        entropy: ``(B, T)`` per-token entropies, for ``entropy_coef`` and the
            ``entropy`` metric.
        entropy_coef: weight of the entropy bonus (needs ``entropy``).
        sapo_temperature_pos: SAPO's temperatures.
        sapo_temperature_neg: see ``sapo_temperature_pos``.
        use_bias_correction_kl: multiply the KL by the ratio (DeepSeek-V3.2).
        vespo_k_pos: VESPO.
        vespo_lambda_pos: see ``vespo_k_pos``.
        vespo_k_neg: see ``vespo_k_pos``.
        vespo_lambda_neg: see ``vespo_k_pos``.

    Returns:
        ``(loss, PolicyMetrics)``: a scalar (float32 at least) and the metrics.

    Examples:
        >>> import jax.numpy as jnp, jaxce
        >>> lp = jnp.array([[-1.0, -0.5, -2.0], [-0.3, -1.2, 0.0]])
        >>> old = jnp.array([[-1.1, -0.4, -2.5], [-0.3, -1.0, 0.0]])
        >>> adv = jnp.array([1.0, -0.5])
        >>> mask = jnp.array([[True, True, True], [True, True, False]])
        >>> loss, m = jaxce.policy_loss(lp, adv, where=mask, old_logprob=old)
        >>> print(loss, m.clip_ratio_high, m.ratio)
        -0.46013 0.2 1.09549
        >>> loss, _ = jaxce.policy_loss(lp, adv, where=mask, old_logprob=old,
        ...                             loss_type="grpo")
        >>> print(round(float(loss), 5))
        -0.30766
    """
    opt = check_policy_options(
        loss_type, epsilon_low, epsilon_high, beta, delta, importance_sampling_level,
        max_completion_length, sapo_temperature_pos, sapo_temperature_neg,
        use_bias_correction_kl,
        (vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg), entropy_coef,
    )  # fmt: skip
    lp = jnp.asarray(logprob)
    dtype = compute_dtype(lp.dtype)
    lp = lp.astype(dtype)
    adv, m, old, ref, isr, ent = prepare_policy_arrays(
        lp.shape, dtype, advantages, where, old_logprob, ref_logprob, is_ratio,
        entropy, opt.beta,
    )  # fmt: skip
    if opt.entropy_coef > 0 and ent is None:
        raise ValueError(
            "`entropy_coef` > 0 needs `entropy` (the per-token entropies)."
        )
    check_policy_normalizer(normalizer, opt)
    return policy_from_logprob(lp, adv, m, old, ref, isr, ent, opt, normalizer)


def policy_from_logprob(lp, adv, m, old, ref, isr, ent, opt: PolicyOptions, normalizer):
    """The checked loss (shared with the fused head's four-matmul path)."""
    old = jax.lax.stop_gradient(lp) if old is None else old
    log_ratio = lp - old
    log_w = phi = None
    if opt.level == "sequence":
        lens = jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1)
        log_w = jnp.sum(log_ratio * m, axis=-1, keepdims=True) / lens
    if opt.loss_type == "vespo":
        phi = vespo_phi(log_ratio, m, adv, isr, opt)
    per, ratio, low, high, kl = token_terms(lp, old, adv, ref, isr, opt, log_w, phi)
    w = norm_weights(m, opt, normalizer)
    loss = jnp.sum(jnp.where(m > 0, per, 0) * w)
    if opt.entropy_coef > 0:
        assert ent is not None
        h = jnp.where(m > 0, ent, 0)
        loss = loss - opt.entropy_coef * jnp.sum(h * m) / jnp.maximum(jnp.sum(m), 1)
    return loss, metrics_of(ratio, low, high, kl, m, ent)
