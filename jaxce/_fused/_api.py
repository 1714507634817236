"""`linear_softmax_cross_entropy`: the public fused loss and its dispatch.

One device: scalar reductions go through the token path (`token_path_loss`,
gradients in the forward), ``reduction="none"`` through the recompute path
(`recompute_loss`). With a ``mesh``: the vocabulary-parallel loss
(`vocab_parallel_loss`).
"""

from __future__ import annotations

from typing import Literal

import jax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import (
    IndexLike,
    Number,
    Reduction,
    ScalarLike,
    batch_spec,
    explicitly_sharded,
    run_auto,
)
from ._mesh import layout_or_none
from ._prepare import prepare
from ._recompute import recompute_loss
from ._tokens import token_path_loss
from ._vocab_parallel import vocab_parallel_loss


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
    batch_axis: str | tuple[str, ...] | None = None,
    vocab_axis: str | tuple[str, ...] | None = None,
) -> Float[Array, "..."]:
    r"""Linear layer + sparse softmax cross-entropy without materialising logits.

    Equal (value and gradients w.r.t. ``hidden``, ``weight``, ``bias``,
    ``class_weights``, ``weights`` and ``normalizer``) to

        sparse_softmax_cross_entropy(z, labels, ...),
        z = hidden @ weight.T + bias          (softcap c: z = c * tanh(z / c))

    i.e. per token, with $\operatorname{lse} = \log\sum_c e^{z_c}$ over the $V$
    classes, class weights $w$ and smoothing $\varepsilon$:

    $$L = (1 - \varepsilon)\, w_y (\operatorname{lse} - z_y)
        + \frac{\varepsilon}{V} \sum_c w_c (\operatorname{lse} - z_c)
        + \lambda\, \operatorname{lse}^2$$

    reduced as in `jaxce.sparse_softmax_cross_entropy`: with sample weights
    $s_n$ (``weights``, default 1) over the present tokens, ``"sum"`` is
    $\sum_n s_n L_n$, ``"mean"`` $\sum_n s_n L_n / \sum_n s_n w_{y_n}$
    (PyTorch's ``F.cross_entropy`` when $s = 1$), ``"sum_over_batch_size"``
    $\sum_n s_n L_n / \#\text{present}$ and, with a ``normalizer`` $Z$, every
    scalar reduction is $\sum_n s_n L_n / Z$.

    Not differentiated, the logits are formed in ``chunk_size``-class blocks
    (and, for many tokens, token blocks of ~16 Mi logits in all, at least 256
    tokens) with float32 accumulation (``preferred_element_type``), also for
    bf16 / fp16 input; the softmax statistics are accumulated online; no
    gradient work is done.

    Differentiated, with a scalar ``reduction`` (``"mean"``, ``"sum"``,
    ``"sum_over_batch_size"``), the gradients are computed in the forward pass
    (as Liger Kernel does) over chunks of ``T`` tokens: each chunk's
    full-vocabulary ``(T, V)`` logits, its ``logsumexp``, the analytic ``dz``
    (see `jaxce.closed_form.linear_softmax_cross_entropy`), ``dH = dz @ W``
    and ``dW += dz.T @ H`` (in ``chunk_size``-class slices): three matmuls, as
    the unfused loss. ``T = max(1, 2**24 // V)`` evened over the tokens (a
    ~64 MiB float32 logits block; all tokens when ``N * V`` is smaller), so the
    extra memory is that block plus float32 gradient accumulators (``dW`` is a
    separate float32 buffer only for bf16 / fp16 weights), never O(N * V). The
    saved residuals are the gradients themselves; the backward only scales them
    by the cotangent. Gradients that are not asked for (e.g. ``weight`` frozen)
    are skipped, their matmul included.

    With ``reduction="none"`` only the per-token ``logsumexp`` is saved and the
    backward recomputes each ``chunk_size``-class block (as Cut Cross Entropy
    does; four matmuls), so the extra memory is O(block + N * D).
    Gradients come back in the input dtypes; ``dz`` is cast to the input dtype
    before its two matmuls (as the unfused bf16 backward does).
    ``jit``, ``grad`` and ``vmap`` work; forward-mode autodiff (``jvp``,
    ``jacfwd``, ``hessian``) does not (a ``jax.custom_vjp``): use the unfused
    loss for those.

    Args:
        hidden: ``(N, D)`` activations.
        weight: ``(V, D)`` classifier (PyTorch ``nn.Linear`` layout) or, with
            ``weight_layout="dv"``, ``(D, V)``; same dtype as ``hidden``.
        labels: ``(N,)`` integer classes in ``[0, V)``. A present label outside
            ``[0, V)`` (not ``ignore_index``, not masked by ``where``) is not
            wrapped or clipped: that token's loss is NaN (as in
            `jaxce.sparse_softmax_cross_entropy`), so the reduced loss is NaN,
            and so are the gradients it reaches, on every path (differentiated
            or not, sharded or not). For a clear run-time error instead, check
            the labels with `jaxce.validate`.
        bias: ``(V,)`` or None.
        class_weights: ``(V,)`` per-class weights $w$.
        ignore_index: label marking absent tokens (PyTorch ``-100``); any
            integer scalar (``int``, ``np.int64``).
        label_smoothing: $\varepsilon \in [0, 1)$, towards uniform over $V$.
        z_loss: $\lambda \ge 0$, weight of ``lse**2`` (PaLM).
        softcap: $c > 0$: logits ``c * tanh(z / c)`` (Gemma 2), or None. It
            maps a ``-inf`` logit (a ``-inf`` bias entry) to ``-c``: that class
            is then in the softmax, as in the unfused formula.
        where: ``(N,)`` boolean **per-token** mask (False tokens are absent); there
            is no per-class mask here.
        weights: ``(N,)`` float per-token sample weights $s_n$ (a scalar
            broadcasts), as in `jaxce.sparse_softmax_cross_entropy`: token
            ``n``'s loss counts ``s_n`` times, in the ``"mean"`` denominator
            too (``sum_n s_n w_{y_n}``); ``"none"`` returns ``s_n L_n``. Absent
            tokens count 0 whatever their weight. Differentiable: the gradient
            w.r.t. ``weights`` is the true one (``dR / ds_n = L_n / Z`` with a
            normalizer, ``L_n`` for ``"sum"``, and for
            ``"mean"`` ``(L_n - R w_{y_n}) / sum_m s_m w_{y_m}``), on every path.
        normalizer: a number or scalar array $Z > 0$ (a traced one is not
            checked); needs a scalar ``reduction``, whose own denominator it
            replaces: the loss is ``sum_n s_n L_n / Z``. Exact gradient
            accumulation: split a batch into microbatches and call each with
            the same ``Z`` (e.g. the whole batch's ``sum_n s_n w_{y_n}``); the
            summed losses and gradients are then the whole batch's ``"mean"``
            ones, which a ``"mean"`` per microbatch is not. Differentiable
            (``dR / dZ = -R / Z``).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        chunk_size: classes per block (of the statistics pass, of the
            recompute backward and of the ``dW`` update in the token-chunked
            gradient pass), an integer scalar >= 1 (``int`` or a NumPy
            integer); None picks 2048 (clipped to ``V``). ``V`` need not be a
            multiple of it. The token chunks are automatic. ``"auto"``: from
            the element budget ``B`` (below), ``sqrt(B)`` classes rounded down
            to a multiple of 128 (at least 128, at most ``V``; 4096 for the
            default budget), with ``B // chunk`` tokens per block.
        memory_budget_bytes: bytes for the logits blocks, an int >= 1; None:
            256 MiB (the default blocks). The element budget is
            ``B = memory_budget_bytes // (4 * itemsize)``: four logits-sized
            arrays live at once (``z``, its ``exp``, ``dz`` and its cast) in
            the compute dtype (itemsize 4 for float32, bf16 and fp16 input; 8
            for float64), so the default is ``B = 2**24`` in float32. The
            token path's ``(T, V)`` chunk has ``T = max(1, B // V)`` tokens; a
            vocabulary block has ``chunk`` classes by ``max(256, B // chunk)``
            tokens (floors that keep the matmuls efficient, so a tiny budget
            is exceeded by them). The result does not depend on the block
            sizes (to float rounding); the gradients and their float32
            accumulators (``dW``, ``dH``) come on top.
        weight_layout: ``"vd"`` (default): ``weight`` is ``(V, D)`` and
            ``z = hidden @ weight.T``; ``"dv"``: ``weight`` is ``(D, V)`` (an
            untied Flax ``nnx.Linear`` kernel) and ``z = hidden @ weight``. The
            kernels contract ``weight`` in place (``lax.dot_general``
            dimension numbers, blocks sliced along its class axis), so ``"dv"``
            makes no transposed copy of it; its gradient comes back ``(D, V)``
            and, on a mesh, ``weight`` is split over its axis 1.
        compact: skip the work of absent tokens (``ignore_index``, ``where``
            False: a prompt, padding). True packs the present tokens to the
            front (a stable sort: the ``(N, D)`` ``hidden`` is gathered once,
            its gradient scattered back) and walks only the token blocks that
            hold one, a loop with a traced trip count: the shapes stay static
            (``(N, ...)``, no recompilation as the count changes), the matmul
            work falls with the number of present tokens, and the result is the
            same (to float rounding: the sums run in another order). The
            skipping granularity is one token block: the gradient pass's
            ``(T, V)`` chunk, and vocabulary blocks of at most ``ceil(N / 8)``
            (at least 256) tokens; with one block nothing is skipped. False
            (default): every token is computed and the absent ones masked.
            With ``mesh``, each device packs its own rows (inside
            ``shard_map``: no token moves between devices, no collective is
            added) and skips its own blocks (``N`` above is then a device's
            rows: more than 256 are needed for two blocks); the devices of one
            vocabulary group hold the same rows, so they pack them alike.
            Under ``vmap``
            the loop runs to the largest count in the batch.
        mesh, batch_axis, vocab_axis: run vocabulary- / data-parallel under
            ``shard_map`` (Megatron-style); ``mesh=None`` runs on one device.
            ``hidden`` / ``labels`` / ``where`` are split over ``batch_axis``
            and ``weight`` / ``bias`` / ``class_weights`` over ``vocab_axis``
            (either may be None: replicated; the two must not share mesh
            axes); ``chunk_size`` applies to each device's vocabulary block.
            Each device streams its own block and only per-token statistics
            are all-reduced: neither ``weight`` nor the logits are gathered,
            the backward recomputes the blocks, and the gradients come back
            split like their inputs (inputs not placed on the mesh: split as
            the loss splits them). Label smoothing divides by the global
            ``V``. Any ``N`` and ``V`` work on any mesh: sizes the axes do not
            divide are padded inside the loss, with the single-device answer.
            Padding classes (zero rows of ``weight``, ``bias``,
            ``class_weights``) have ``-inf`` logits: they are out of the
            softmax, of label smoothing (its ``K`` is the real ``V``) and of
            the z-loss's ``lse``; padding tokens are absent (in no reduction or
            its denominator). Both get no gradient, and the results have the
            caller's shapes (padding sliced off). JAX has no uneven layouts,
            so an array whose size its axis does not divide is replicated, and
            so are its gradient and (padded ``N``) the ``"none"`` losses:
            with a padded ``V`` the backward all-gathers the ``(V, D)`` weight
            gradient once (nothing else of the size of ``weight`` or of the
            logits is gathered); keep ``V`` a multiple of the vocabulary axis
            to keep ``weight`` split. Meshes with ``Auto`` axes
            (``jax.sharding.Mesh``) and ``Explicit`` axes (``jax.make_mesh``)
            both work, under ``jit`` and eagerly, with the inputs placed on the
            mesh (``jax.device_put``) or not. With ``Explicit`` axes an *eager*
            ``jax.grad`` must run inside ``with jax.set_mesh(mesh):`` (or under
            ``jax.jit``): outside it JAX cannot form the cotangent of an
            explicitly sharded output ("Length of device assignment 1 is not
            equal to the size of the mesh").

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

        A Flax ``(features, vocab)`` kernel, untransposed:

        >>> print(jaxce.linear_softmax_cross_entropy(h, w.T, y, weight_layout="dv"))
        0.91970

        Vocabulary-parallel over every device: the 4 classes are padded to a
        multiple of the device count when it does not divide them.

        >>> import numpy as np
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
        >>> print(jaxce.linear_softmax_cross_entropy(
        ...     h, w, y, chunk_size=3, mesh=mesh, vocab_axis="vocab"))
        0.91970

    References:
        Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*
        (Cut Cross-Entropy), 2024, https://arxiv.org/abs/2411.09009;
        Hsu et al., *Liger Kernel*, 2024, https://arxiv.org/abs/2410.10989;
        Shoeybi et al., *Megatron-LM*, 2019 (vocabulary-parallel
        cross-entropy), https://arxiv.org/abs/1909.08053.
    """
    layout = layout_or_none(mesh, batch_axis, vocab_axis)
    arrays = (hidden, weight, labels, bias, class_weights, where, weights, normalizer)
    if layout is None and explicitly_sharded(*arrays):
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

        out = batch_spec(hidden) if reduction == "none" else P()
        return run_auto(auto, arrays, out)
    p = prepare(
        hidden, weight, labels, bias=bias, class_weights=class_weights,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, where=where, reduction=reduction, chunk_size=chunk_size,
        weights=weights, normalizer=normalizer, weight_layout=weight_layout,
        memory_budget_bytes=memory_budget_bytes, compact=compact,
        pack=layout is None,  # on a mesh each device packs its own rows
    )  # fmt: skip
    if layout is not None:
        return vocab_parallel_loss(p, layout)
    if p.reduction != "none":
        return token_path_loss(p)
    return p.unpack(recompute_loss(p))
