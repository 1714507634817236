"""`linear_softmax_cross_entropy`: the fused linear -> softmax cross-entropy.

One device with a scalar reduction: the row loss `CERows` (gradients formed in
the forward, three matmuls). ``reduction="none"`` or a mesh: the streamed
statistic `CEStat` (recompute in the backward), then `token_losses` and the
reduction in plain JAX. See ``docs/fused.md``.
"""

from __future__ import annotations

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
    check_class_weights,
    check_label_smoothing,
    check_nonneg,
    explicitly_sharded,
    is_static_zero,
    make_reducer,
    nan_where,
    run_auto,
)
from ._ce_kernels import CEParams, CERows, CEStat, CEStats, token_losses
from ._engine import AxisName, Call, layout_or_none, prepare_call, rows, stream


def ce_params(call: Call, class_weights, label_smoothing, z_loss) -> CEParams:
    """The checked options of cross-entropy (None: statically absent)."""
    cdt = call.dtype
    cw = check_class_weights(class_weights, call.num_classes, cdt)
    check_label_smoothing(label_smoothing)
    check_nonneg(z_loss, "z_loss")
    opt = lambda x: None if is_static_zero(x) else jnp.asarray(x, cdt)  # noqa: E731
    return CEParams(cw, opt(label_smoothing), opt(z_loss))


def ce_coefficients(call: Call, reducer, params: CEParams) -> Array:
    """The reduction's ``c_n`` (NaN for invalid labels) of the row path."""
    cw = params.class_weights
    w_y = None if cw is None else cw[call.labels]
    return nan_where(call.invalid, reducer.coefficients(w_y))


def linear_softmax_cross_entropy(
    hidden: Float[ArrayLike, "_tokens _features"],
    weight: Float[ArrayLike, "_vocab_or_features _features_or_vocab"],
    labels: Int[ArrayLike, " _tokens"],
    *,
    bias: Float[ArrayLike, " _vocab"] | None = None,
    class_weights: Float[ArrayLike, " _vocab"] | None = None,
    ignore_index: IndexLike | None = None,
    label_smoothing: ScalarLike = 0.0,
    z_loss: ScalarLike = 0.0,
    softcap: Number | None = None,
    where: Bool[ArrayLike, " _tokens"] | None = None,
    weights: Float[ArrayLike, " _tokens"] | None = None,
    normalizer: ScalarLike | None = None,
    reduction: Reduction = "mean",
    chunk_size: IndexLike | Literal["auto"] | None = None,
    memory_budget_bytes: int | None = None,
    weight_layout: Literal["vd", "dv"] = "vd",
    compact: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: AxisName = None,
    vocab_axis: AxisName = None,
) -> Float[Array, "..."]:
    r"""Linear layer + sparse softmax cross-entropy without materialising logits.

    Equal (value and gradients w.r.t. ``hidden``, ``weight``, ``bias``,
    ``class_weights``, ``weights`` and ``normalizer``) to
    ``sparse_softmax_cross_entropy(z, labels, ...)`` with
    ``z = softcap(hidden @ weight.T + bias)``, i.e. per token, with
    $m = \max_c z_c$, $\log s = \log\sum_c e^{z_c - m}$ (so
    $\operatorname{lse} = m + \log s$), class weights $w$, smoothing
    $\varepsilon$ and z-loss $\lambda$:

    $$L = (1 - \varepsilon)\, w_y \big((m - z_y) + \log s\big)
        + \frac{\varepsilon}{V} \sum_c w_c (\operatorname{lse} - z_c)
        + \lambda\, \operatorname{lse}^2$$

    (the row max is subtracted before any difference is formed, so large
    logits do not cancel), reduced as in `jaxce.sparse_softmax_cross_entropy`.

    How it runs (details in the docs' "How the fused heads work"): undifferentiated,
    one matmul over blocks; differentiated with a scalar ``reduction`` on one
    device, the gradients are formed in the forward from full-vocabulary token
    chunks (three matmuls, as the unfused loss); with ``reduction="none"`` or
    a ``mesh``, per-token statistics are streamed and the backward recomputes
    each block (four matmuls). The logits are never ``(N, V)``; they are formed
    in float32 from bf16 / fp16 operands. ``jit``, ``grad`` and ``vmap``
    work; forward-mode autodiff does not (a ``jax.custom_vjp``).

    Args:
        hidden: ``(N, D)`` activations (``N = 0``: the loss is 0).
        weight: ``(V, D)`` (``weight_layout="vd"``, ``nn.Linear``) or ``(D, V)``
            (``"dv"``, a Flax kernel); the dtype of ``hidden``.
        labels: ``(N,)`` integer classes. A present label outside ``[0, V)`` is
            not wrapped: its loss is NaN, and so is every gradient it reaches
            (check with `jaxce.validate` for an error).
        bias: ``(V,)`` or None.
        class_weights: ``(V,)`` per-class weights $w$.
        ignore_index: label of absent tokens (PyTorch: ``-100``).
        label_smoothing: $\varepsilon \in [0, 1)$, towards uniform over $V$.
        z_loss: $\lambda \ge 0$, weight of ``lse**2`` (PaLM).
        softcap: a finite $c > 0$: logits ``c * tanh(z / c)`` (Gemma 2), or
            None. A ``-inf`` bias entry becomes ``-c`` (still in the softmax).
        where: ``(N,)`` per-token mask (False tokens are absent).
        weights: per-token sample weights $s_n$ (``(N,)``, or broadcastable to
            it), as in `jaxce.sparse_softmax_cross_entropy`; differentiable.
        normalizer: $Z > 0$ replacing a scalar reduction's denominator:
            ``sum_n s_n L_n / Z`` (exact gradient accumulation over
            microbatches); differentiable.
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        chunk_size: classes per vocabulary block (an int >= 1; None: 2048 on
            CPU, 8192 on GPU / TPU; ``"auto"``). Results do not depend on it.
        memory_budget_bytes: bytes for the logits blocks, four live arrays of
            ``B`` elements each (None: 256 MiB on CPU, 2 GiB on GPU / TPU: the
            plan follows the platform the module is *lowered* for, so an
            exported CUDA module carries the GPU's blocks); a token chunk of
            the row path has ``B // V`` tokens (1024 at ``V = 128256`` on a
            GPU). Results do not depend on it.
        weight_layout: ``"vd"`` or ``"dv"``; ``weight`` is contracted in place,
            never transposed, and its gradient has its shape.
        compact: skip the work of absent tokens (packed to the front, blocks
            after them skipped; same result, no recompilation as their number
            changes).
        mesh: vocabulary- / data-parallel under
            ``shard_map``: ``hidden`` and the per-token arrays split over
            ``batch_axis``, ``weight`` / ``bias`` / ``class_weights`` over
            ``vocab_axis``; any sizes (padded inside). See ``docs/distributed.md``.
        batch_axis: see ``mesh``.
        vocab_axis: see ``mesh``.

    Returns:
        ``(N,)`` losses for ``"none"`` (absent tokens 0), else a scalar; dtype of
        ``hidden``.

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
        >>> w = jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 1.0], [2.0, 0.0]])
        >>> y = jnp.array([0, 3, 2])
        >>> print(jaxce.linear_softmax_cross_entropy(h, w, y, chunk_size=3))
        0.91970
        >>> print(jaxce.sparse_softmax_cross_entropy(h @ w.T, y))
        0.91970
        >>> dh, dw = jax.grad(jaxce.linear_softmax_cross_entropy, (0, 1))(h, w, y)
        >>> print(dw[0])
        [-0.22948  0.21653]

        Gradient accumulation: two microbatches, each divided by the whole
        batch's token count, sum to the whole batch's mean.

        >>> a = jaxce.linear_softmax_cross_entropy(h[:2], w, y[:2], normalizer=3)
        >>> b = jaxce.linear_softmax_cross_entropy(h[2:], w, y[2:], normalizer=3)
        >>> print(a + b)
        0.91970
        >>> print(jaxce.linear_softmax_cross_entropy(
        ...     h, w, y, weights=jnp.array([1.0, 0.0, 2.0]), reduction="sum"))
        3.27534

        A Flax ``(features, vocab)`` kernel, and vocabulary-parallel over every
        device (the 4 classes padded to a multiple of the device count):

        >>> print(jaxce.linear_softmax_cross_entropy(h, w.T, y, weight_layout="dv"))
        0.91970
        >>> import numpy as np
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
        >>> print(jaxce.linear_softmax_cross_entropy(
        ...     h, w, y, chunk_size=3, mesh=mesh, vocab_axis="vocab"))
        0.91970

    References:
        Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*,
        2024, https://arxiv.org/abs/2411.09009; Hsu et al., *Liger Kernel*,
        2024, https://arxiv.org/abs/2410.10989; Shoeybi et al., *Megatron-LM*,
        2019, https://arxiv.org/abs/1909.08053.
    """
    lay = layout_or_none(mesh, batch_axis, vocab_axis)
    arrays = (hidden, weight, labels, bias, class_weights, where, weights, normalizer)
    if lay is None and explicitly_sharded(*arrays):
        # Explicitly sharded input without `mesh=`: the blockwise kernels run with
        # the mesh's axes as Auto (the compiler partitions them).
        def auto(h, w, y, b, cw, m, sw, z):
            return linear_softmax_cross_entropy(
                h, w, y, bias=b, class_weights=cw, ignore_index=ignore_index,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                where=m, weights=sw, normalizer=z, reduction=reduction,
                chunk_size=chunk_size, memory_budget_bytes=memory_budget_bytes,
                weight_layout=weight_layout, compact=compact,
            )  # fmt: skip

        return run_auto(
            auto, arrays, batch_spec(hidden) if reduction == "none" else P()
        )
    call = prepare_call(
        hidden, weight, labels, bias=bias, ignore_index=ignore_index, where=where,
        softcap=softcap, chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes, weight_layout=weight_layout,
        compact=compact,
    )  # fmt: skip
    params = ce_params(call, class_weights, label_smoothing, z_loss)
    reducer = make_reducer(
        call.present, call.dtype, call.head.hidden.dtype, weights=weights,
        reduction=reduction, base=None, normalizer=normalizer,
    )  # fmt: skip
    v = call.num_classes
    if lay is None and reducer.reduction != "none":
        coef = ce_coefficients(call, reducer, params)
        loss = rows(CERows(v), call, None, call.head, params=params, coef=coef)
        return loss.astype(reducer.out_dtype)
    cw = params.class_weights
    stat = CEStat(smoothing=params.eps is not None, weighted=cw is not None)
    s: CEStats = stream(stat, call, lay, call.head, () if cw is None else (cw,))
    place = (lambda x: x) if lay is None else lay.rows
    if lay is not None:  # the sum of the class weights: split like them
        params = params._replace(class_weights=lay.per_class(cw))
    loss = token_losses(s, params, v, place(call.invalid))
    if lay is not None:
        reducer = lay.rows_reducer(reducer)
    return reducer.reduce(loss, None if cw is None else s.w_y)
