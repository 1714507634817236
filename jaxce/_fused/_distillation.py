"""`linear_distillation_loss`: student and teacher heads + distillation loss.

The row loss `DistillRows` takes each token chunk's full-vocabulary student
rows and, as an auxiliary head, the teacher's; the divergence and its
closed-form gradient come from `jaxce._losses._distillation`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import (
    IndexLike,
    Number,
    Reduction,
    ScalarLike,
    batch_spec,
    compute_dtype,
    explicitly_sharded,
    make_reducer,
    run_auto,
)
from .._losses._distillation import (
    Divergence,
    Kind,
    check_divergence,
    divergence_grad,
    divergence_parts,
)
from ._engine import (
    AxisName,
    Head,
    RowLoss,
    Vocab,
    check_head,
    layout_or_none,
    num_classes,
    prepare_call,
    rows,
)


@dataclasses.dataclass(frozen=True)
class DistillRows(RowLoss):
    """The divergence of the tempered student rows from the teacher's."""

    div: Divergence

    def _parts(self, z, aux, vocab: Vocab):
        inv_tau = 1.0 / self.div.temperature
        zs, zt = (x if inv_tau == 1.0 else x * inv_tau for x in (z, aux[0]))
        log_s, log_t = vocab.log_softmax(zs), vocab.log_softmax(zt)
        per, kl_s = divergence_parts(log_s, log_t, self.div)
        per, kl_s = jax.tree.map(vocab.psum, (per, kl_s))  # rows over the shards
        return per, kl_s, log_s, log_t

    def value(self, z, aux, blk, params, vocab):
        return self._parts(z, aux, vocab)[0]

    def value_and_grad(self, z, aux, blk, params, vocab, coef, want_params):
        per, kl_s, log_s, log_t = self._parts(z, aux, vocab)
        g = divergence_grad(log_s, log_t, kl_s, self.div)
        k = coef / jnp.asarray(self.div.temperature, coef.dtype)
        return per, k[:, None] * g, None


def linear_distillation_loss(
    student_hidden: Float[ArrayLike, "_tokens _student_features"],
    student_weight: Float[ArrayLike, "_vocab_or_features _features_or_vocab"],
    teacher_hidden: Float[ArrayLike, "_tokens _teacher_features"],
    teacher_weight: Float[ArrayLike, "_vocab_or_features _features_or_vocab"],
    *,
    kind: Kind = "forward_kl",
    beta: Number = 0.5,
    temperature: Number = 1.0,
    softcap: Number | None = None,
    student_bias: Float[ArrayLike, " _vocab"] | None = None,
    teacher_bias: Float[ArrayLike, " _vocab"] | None = None,
    labels: Int[ArrayLike, " _tokens"] | None = None,
    ignore_index: IndexLike | None = None,
    where: Bool[ArrayLike, " _tokens"] | None = None,
    weights: Float[ArrayLike, " _tokens"] | None = None,
    reduction: Reduction = "mean",
    normalizer: ScalarLike | None = None,
    base: Number | None = None,
    chunk_size: IndexLike | Literal["auto"] | None = None,
    memory_budget_bytes: int | None = None,
    weight_layout: Literal["vd", "dv"] = "vd",
    compact: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: AxisName = None,
    vocab_axis: AxisName = None,
) -> Float[Array, "..."]:
    r"""Student and teacher linear heads + distillation loss, without the logits.

    Equal (value and gradients) to ``distillation_loss(z_s, z_t, ...)`` with
    ``z_s = student_hidden @ student_weight.T + student_bias`` and ``z_t`` the
    teacher's (see `jaxce.distillation_loss`). Per token, with $p_s =
    \operatorname{softmax}(z_s / \tau)$ and $p_t = \operatorname{softmax}(z_t /
    \tau)$: ``"forward_kl"`` $\mathrm{KL}(p_t \,\|\, p_s)$, ``"reverse_kl"``
    $\mathrm{KL}(p_s \,\|\, p_t)$, ``"jsd"`` $\beta\, \mathrm{KL}(p_t \,\|\, m)
    + (1 - \beta)\, \mathrm{KL}(p_s \,\|\, m)$ with $m = \beta p_t + (1 - \beta)
    p_s$; no $\tau^2$ factor. The two models may have different feature sizes;
    they share the vocabulary (and ``weight_layout``).

    Liger Kernel: ``LigerFusedLinearJSD(jsd_beta=b, ignore_index=i,
    temperature=tau)(hs, ws, ht, wt, labels)`` is ``linear_distillation_loss(hs,
    ws, ht, wt, kind="jsd", beta=b, temperature=tau, labels=labels,
    ignore_index=i)`` (``"mean"`` over the tokens not ignored; with none left
    jaxce gives 0 where Liger divides by 0).

    Both models' logits are formed ``T`` tokens at a time over the whole
    vocabulary (the two blocks share the budget), and the closed-form student
    gradient is formed in the forward (three matmuls for the student); see the
    docs' "How the fused heads work". The teacher is a constant (zero
    gradients). ``jit``, ``grad`` and ``vmap`` work; forward-mode does not.

    Args:
        student_hidden: ``(N, D_s)`` student activations (``N = 0``: 0).
        student_weight: ``(V, D_s)`` (``"dv"``: ``(D_s, V)``), its dtype.
        teacher_hidden: ``(N, D_t)`` teacher activations.
        teacher_weight: ``(V, D_t)`` (``"dv"``: ``(D_t, V)``), its dtype.
        kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
        beta: $\beta \in [0, 1]$, the teacher's weight in the JSD mixture.
        temperature: $\tau > 0$.
        softcap: a finite $c > 0$: both models' logits ``c * tanh(z / c)``
            (Gemma 2) before the temperature, as in
            `jaxce.linear_softmax_cross_entropy`; or None.
        student_bias: ``(V,)`` or None.
        teacher_bias: see ``student_bias``.
        labels: ``(N,)`` integer labels, only to mark ignored tokens (those
            equal to ``ignore_index``, Liger's ``shift_labels``); both or
            neither.
        ignore_index: the label of absent tokens (``-100``).
        where: ``(N,)`` boolean per-token mask (False tokens are absent).
        weights: per-token sample weights.
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, ``sum(weights * L) / normalizer``.
        base: log base of the result (``None``: nats, ``2``: bits).
        chunk_size: the block plan, as in
            `jaxce.linear_softmax_cross_entropy` (the two models share the
            budget). Results do not depend on it.
        memory_budget_bytes: see ``chunk_size``.
        weight_layout: ``"vd"`` or ``"dv"``, for both weights.
        compact: skip the work of absent tokens. Same results.
        mesh: vocabulary- / data-parallel, as in
            `jaxce.linear_softmax_cross_entropy` (both models' hidden states
            over ``batch_axis``, both weights over ``vocab_axis``).
        batch_axis: see ``mesh``.
        vocab_axis: see ``mesh``.

    Returns:
        ``(N,)`` losses for ``"none"`` (absent tokens 0), else a scalar; dtype of
        ``student_hidden``.

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> hs = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
        >>> ws = jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 1.0], [2.0, 0.0]])
        >>> ht = jnp.array([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
        >>> wt = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [1.0, 1.0, -1.0],
        ...                 [0.5, 0.0, 1.0]])
        >>> print(jaxce.linear_distillation_loss(hs, ws, ht, wt, kind="jsd"))
        0.14339
        >>> print(jaxce.distillation_loss(hs @ ws.T, ht @ wt.T, kind="jsd"))
        0.14339
        >>> dhs = jax.grad(jaxce.linear_distillation_loss)(hs, ws, ht, wt)
        >>> print(dhs[0])
        [ 0.51193 -0.16405]

        Vocabulary-parallel over every device (the 4 classes padded):

        >>> import numpy as np
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
        >>> print(jaxce.linear_distillation_loss(
        ...     hs, ws, ht, wt, kind="jsd", mesh=mesh, vocab_axis="vocab"))
        0.14339

    References:
        Hsu et al., *Liger Kernel*, 2024, https://arxiv.org/abs/2410.10989
        (``LigerFusedLinearJSD``); Agarwal et al., *On-Policy Distillation of
        Language Models*, 2024, https://arxiv.org/abs/2306.13649.
    """
    lay = layout_or_none(mesh, batch_axis, vocab_axis)
    arrays = (
        student_hidden, student_weight, teacher_hidden, teacher_weight,
        student_bias, teacher_bias, labels, where, weights, normalizer,
    )  # fmt: skip
    if lay is None and explicitly_sharded(*arrays):  # kernels with Auto axes
        out = batch_spec(student_hidden) if reduction == "none" else P()

        def auto(sh, sw, th, tw, sb, tb, y, m, w, z):
            return linear_distillation_loss(
                sh, sw, th, tw, kind=kind, beta=beta, temperature=temperature,
                softcap=softcap, student_bias=sb, teacher_bias=tb, labels=y,
                ignore_index=ignore_index, where=m, weights=w, reduction=reduction,
                normalizer=z, base=base, chunk_size=chunk_size,
                memory_budget_bytes=memory_budget_bytes,
                weight_layout=weight_layout, compact=compact,
            )  # fmt: skip

        return run_auto(auto, arrays, out)
    div = check_divergence(kind, beta, temperature)
    if (labels is None) != (ignore_index is None):
        raise ValueError(
            "`labels` only mark ignored tokens: pass both `labels` and "
            "`ignore_index`, or neither (use `where` for a boolean mask)."
        )
    if labels is not None and not jnp.issubdtype(
        jnp.asarray(labels).dtype, jnp.integer
    ):
        raise TypeError(
            "`labels` only mark ignored tokens (those equal to `ignore_index`) "
            f"and must be integers, got dtype {jnp.asarray(labels).dtype}."
        )
    call = prepare_call(
        student_hidden, student_weight, labels, bias=student_bias,
        ignore_index=ignore_index, where=where, softcap=softcap, chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes, weight_layout=weight_layout,
        compact=compact, who="student_",
    )  # fmt: skip
    teacher = _teacher(call, teacher_hidden, teacher_weight, teacher_bias)
    dtype = compute_dtype(call.head.hidden.dtype, teacher.hidden.dtype)
    reducer = make_reducer(
        call.present, dtype, call.head.hidden.dtype, weights=weights,
        reduction=reduction, base=base, normalizer=normalizer,
    )  # fmt: skip
    loss = DistillRows(div)
    if reducer.reduction == "none":
        per = rows(loss, call, lay, call.head, aux=(teacher,))
        if lay is not None:
            reducer = lay.rows_reducer(reducer)
        return reducer.reduce(per)
    coef = reducer.coefficients()
    out = rows(loss, call, lay, call.head, aux=(teacher,), coef=coef)
    return out.astype(reducer.out_dtype)


def _teacher(call, hidden, weight, bias) -> Head:
    """The teacher head, checked against the student's tokens and vocabulary."""
    t = check_head(hidden, weight, bias, call.weight_layout, "teacher_")
    s = call.head
    if t.hidden.shape[0] != s.hidden.shape[0]:
        raise ValueError(
            f"`teacher_hidden` {t.hidden.shape} must have the tokens of "
            f"`student_hidden` {s.hidden.shape}: got {t.hidden.shape[0]} != "
            f"{s.hidden.shape[0]}."
        )
    v = num_classes(t.weight, call.weight_layout)
    if v != call.num_classes:
        raise ValueError(
            f"`teacher_weight` {t.weight.shape} must have the vocabulary of "
            f"`student_weight` {s.weight.shape}: got {v} != {call.num_classes}."
        )
    return t
