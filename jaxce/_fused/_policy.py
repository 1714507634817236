"""`linear_policy_loss`: a linear head + the GRPO-family policy loss, fused.

Token-level loss types are a sum of per-token terms of each token's own
log-prob (and entropy): the row loss `PolicyRows` forms each chunk's
full-vocabulary rows, the term (`jaxce._losses._policy.token_terms`) times its
normalisation weight, and its gradient in the forward (three matmuls); the
ratios, clip flags, KL and entropy come back as the row pass's per-token
statistics. Sequence-level importance sampling (GSPO) and ``"vespo"`` couple
the tokens of a sequence, so they differentiate `linear_token_stats` (four
matmuls).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import IndexLike, Number, compute_dtype
from .._losses._policy import (
    LossType,
    PolicyMetrics,
    PolicyOptions,
    check_policy_normalizer,
    check_policy_options,
    metrics_of,
    norm_weights,
    policy_from_logprob,
    prepare_policy_arrays,
    token_terms,
)
from ._engine import AxisName, RowLoss, Tokens, layout_or_none, prepare_call, rows
from ._token_stats import linear_token_stats


@dataclasses.dataclass(frozen=True)
class PolicyRows(RowLoss):
    """Per token ``w (policy term) - e H``, with the statistics ``(ratio,
    clipped_low, clipped_high, kl, entropy)``."""

    opt: PolicyOptions
    tau: float
    has_old: bool
    has_ref: bool
    has_isr: bool
    stats = 5
    blocks = 2  # the autodiff of the row keeps twice the closed forms' arrays

    def value(self, z, aux, blk, params, vocab):
        zt = z if self.tau == 1.0 else z * (1.0 / self.tau)
        # Sums over every shard first, the rest replicated (so `_psum` is
        # right); the shift (pmax) is a constant to autodiff.
        mx = vocab.max(jax.lax.stop_gradient(jnp.max(zt, axis=-1)))[1]
        zero = jnp.zeros((), z.dtype)
        d = zt - mx[:, None]
        ex = jnp.exp(d)
        safe = jnp.where(ex > 0, d, zero)  # no 0 * -inf, nor in the gradient
        big_s = _psum(vocab, jnp.sum(ex, axis=-1))
        log_s = jnp.log(big_s)
        lp = _psum(vocab, blk.at_label(d, zero)) - log_s
        ent = log_s - _psum(vocab, jnp.sum(ex * safe, axis=-1)) / big_s
        old, adv, ref, isr, w, e = blk.tokens
        old = old if self.has_old else jax.lax.stop_gradient(lp)
        per, ratio, low, high, kl = token_terms(
            lp, old, adv, ref if self.has_ref else None,
            isr if self.has_isr else None, self.opt,
        )  # fmt: skip
        if self.opt.entropy_coef == 0:
            ent = jax.lax.stop_gradient(ent)
        loss = w * per - e * ent
        sg = jax.lax.stop_gradient
        cols = (ratio, low.astype(z.dtype), high.astype(z.dtype), kl, ent)
        return jnp.stack([loss, *(sg(c) for c in cols)], axis=-1)


def _psum(vocab, x):
    """The sum over the vocabulary shards, whose cotangent reaches this shard's
    ``x`` once (a ``psum``'s own transpose would sum the replicated cotangent
    over the shards again, under the engine's ``check_vma=False``)."""
    if not vocab.sharded:
        return x
    return x + jax.lax.stop_gradient(vocab.psum(x) - x)


def linear_policy_loss(
    hidden: Float[ArrayLike, "_batch _time _features"],
    weight: Float[ArrayLike, "_vocab _features"] | Float[ArrayLike, "_features _vocab"],
    tokens: Int[ArrayLike, "_batch _time"],
    advantages: Float[ArrayLike, " _batch"],
    *,
    where: Bool[ArrayLike, "_batch _time"],
    temperature: Number = 1.0,
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
    entropy_coef: Number = 0.0,
    sapo_temperature_pos: Number = 1.0,
    sapo_temperature_neg: Number = 1.05,
    use_bias_correction_kl: bool = False,
    vespo_k_pos: Number = 2.0,
    vespo_lambda_pos: Number = 3.0,
    vespo_k_neg: Number = 3.0,
    vespo_lambda_neg: Number = 2.0,
    bias: Float[ArrayLike, " _vocab"] | None = None,
    chunk_size: IndexLike | Literal["auto"] | None = None,
    memory_budget_bytes: int | None = None,
    weight_layout: Literal["vd", "dv"] = "vd",
    compact: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: AxisName = None,
    vocab_axis: AxisName = None,
) -> tuple[Float[Array, ""], PolicyMetrics]:
    r"""A linear head + GRPO-family policy loss, without the ``(B, T, V)`` logits.

    Equal (value, metrics and gradients) to ``policy_loss(s.logprob, ...,
    entropy=s.entropy)`` with ``s = linear_token_stats(hidden, weight, tokens,
    temperature=temperature, ...)`` reshaped to ``(B, T)``; see
    `jaxce.policy_loss` for every option. The ``entropy`` metric and
    ``entropy_coef``'s bonus use the policy's own entropy, computed here.

    Liger-Kernel 0.8.5: ``LigerFusedLinearGRPOLoss(beta=b, loss_type=t,
    epsilon_low=el, epsilon_high=eh, importance_sampling_level=l, delta=d,
    max_completion_length=m, temperature=tau, use_ref_model=...)(h.view(B*T, D),
    w, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old,
    vllm_is_ratio=r, num_items_in_batch=n)`` is ``linear_policy_loss(h, w, ids,
    adv, where=mask.bool(), beta=b, loss_type=t, ..., ref_logprob=ref,
    old_logprob=old, is_ratio=r, normalizer=n)``; its metrics ``[kl,
    clip_ratio]`` are ``metrics.kl`` and ``metrics.clip_ratio``.

    Paths: with ``importance_sampling_level="token"`` and every loss type but
    ``"vespo"`` the loss is a sum of per-token terms: each chunk of tokens
    forms its full-vocabulary rows once and the gradient in the forward,
    three ``N x D x V`` matmuls (as the fused cross-entropy). ``"sequence"``
    (GSPO) and ``"vespo"`` couple each sequence's tokens and take
    ``jax.grad`` through `jaxce.linear_token_stats` (four matmuls).

    Args:
        hidden: ``(B, T, D)`` hidden states of the completion tokens.
        weight: ``(V, D)`` (``"dv"``: ``(D, V)``).
        tokens: ``(B, T)`` sampled token ids.
        advantages: ``(B,)``.
        where: ``(B, T)`` boolean completion mask; absent tokens get no
            gradient and (``compact=True``) no work.
        temperature: the logits are divided by it (the sampler's temperature).
        bias: ``(V,)`` or None.
        chunk_size: as in `jaxce.linear_softmax_cross_entropy`.
        memory_budget_bytes: as in `jaxce.linear_softmax_cross_entropy`.
        weight_layout: as in `jaxce.linear_softmax_cross_entropy`.
        compact: as in `jaxce.linear_softmax_cross_entropy`.
        mesh: as in `jaxce.linear_softmax_cross_entropy`.
        batch_axis: as in `jaxce.linear_softmax_cross_entropy`.
        vocab_axis: as in `jaxce.linear_softmax_cross_entropy`.

    The other options are as in `jaxce.policy_loss`.

    Returns:
        ``(loss, PolicyMetrics)``.

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> h = jax.random.normal(jax.random.key(0), (2, 3, 4))
        >>> w = jax.random.normal(jax.random.key(1), (8, 4))
        >>> ids = jnp.array([[1, 2, 3], [4, 5, 0]])
        >>> mask = jnp.array([[True, True, True], [True, True, False]])
        >>> adv = jnp.array([1.0, -0.5])
        >>> loss, m = jaxce.linear_policy_loss(h, w, ids, adv, where=mask)
        >>> s = jaxce.linear_token_stats(h.reshape(6, 4), w, ids.reshape(6))
        >>> ref, _ = jaxce.policy_loss(s.logprob.reshape(2, 3), adv, where=mask)
        >>> print(loss, jnp.allclose(loss, ref), m.ratio)
        -0.4 True 1.0
        >>> g = jax.grad(lambda w: jaxce.linear_policy_loss(
        ...     h, w, ids, adv, where=mask, loss_type="grpo", entropy_coef=0.01)[0])(w)
        >>> print(g.shape)
        (8, 4)
    """
    opt = check_policy_options(
        loss_type, epsilon_low, epsilon_high, beta, delta, importance_sampling_level,
        max_completion_length, sapo_temperature_pos, sapo_temperature_neg,
        use_bias_correction_kl,
        (vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg), entropy_coef,
    )  # fmt: skip
    h = jnp.asarray(hidden)
    if h.ndim != 3:
        raise ValueError(f"`hidden` must be (B, T, D), got shape {h.shape}.")
    b, t, d = h.shape
    ids = jnp.asarray(tokens)
    if ids.shape != (b, t):
        raise ValueError(f"`tokens` must have shape {(b, t)}, got {ids.shape}.")
    check_policy_normalizer(normalizer, opt)
    dtype = compute_dtype(h.dtype)  # float32 for bf16 / fp16
    adv, m, old, ref, isr, _ = prepare_policy_arrays(
        (b, t), dtype, advantages, where, old_logprob, ref_logprob, is_ratio,
        None, opt.beta,
    )  # fmt: skip
    flat = jnp.asarray(where).reshape(b * t)
    common = dict(
        bias=bias, temperature=temperature, where=flat, chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes, weight_layout=weight_layout,
        compact=compact,
    )  # fmt: skip
    if not opt.token_sum:
        s = linear_token_stats(
            h.reshape(b * t, d), weight, ids.reshape(b * t), **common,  # type: ignore[arg-type]
            mesh=mesh, batch_axis=batch_axis, vocab_axis=vocab_axis,
        )  # fmt: skip
        lp, ent = (x.reshape(b, t).astype(dtype) for x in (s.logprob, s.entropy))
        return policy_from_logprob(lp, adv, m, old, ref, isr, ent, opt, normalizer)
    call = prepare_call(h.reshape(b * t, d), weight, ids.reshape(b * t), **common)  # type: ignore[arg-type]
    lay = layout_or_none(mesh, batch_axis, vocab_axis)
    w = norm_weights(m, opt, normalizer)
    e = m * (opt.entropy_coef / jnp.maximum(jnp.sum(m), 1))
    zeros = jnp.zeros((b, t), dtype)
    full = lambda x: zeros if x is None else jnp.broadcast_to(x, (b, t))  # noqa: E731
    extra = tuple(
        full(x).reshape(b * t).astype(dtype)
        for x in (old, jnp.broadcast_to(adv, (b, t)), ref, isr, w, e)
    )
    loss_fn = PolicyRows(
        opt, call.temperature, old is not None, ref is not None, isr is not None
    )
    toks = Tokens(call.labels, call.present, extra)
    loss, st = rows(loss_fn, call, lay, call.head, tokens=toks, coef=m.reshape(b * t))  # type: ignore[misc]
    ratio, low, high, kl, ent = (st[:, i].reshape(b, t) for i in range(5))
    metrics = metrics_of(ratio, low > 0, high > 0, kl, m, ent)
    return loss.astype(dtype), metrics
