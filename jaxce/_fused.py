"""Fused linear -> softmax cross-entropy that never builds the ``(N, V)`` logits.

Two gradient paths (the value is the same statistics pass in both):

- scalar reductions (``"mean"``, ``"sum"``, ``"sum_over_batch_size"``):
  ``jaxce._fused_tokens.scalar_loss``, a custom_vjp around the whole loss whose
  forward rule (run only under differentiation) computes the gradients token
  chunk by token chunk -- three ``N x D x V`` matmuls, as the unfused loss;
- ``reduction="none"`` (per-token cotangents), and the sharded loss: the
  recompute path below (``fused_stats``: the backward recomputes the logits,
  four matmuls, O(N) residuals).

Structure (reusable pieces for the vocabulary-parallel version in
``jaxce/_fused_sharded.py``; all importable from ``jaxce._fused``):

The loss only needs three per-token statistics of the logits ``z``:
``lse = logsumexp_c z``, the target logit ``z_y`` and (label smoothing only)
``sum_wz = sum_c w_c z_c``. `fused_stats` computes them chunk by chunk under a
``jax.custom_vjp`` whose forward saves only ``lse`` (O(N)); the backward
recomputes each logits block. The loss is then composed from the statistics in
plain JAX (`token_losses`, then `jaxce._options.reduce_loss`), so autodiff of
that O(N) part gives the per-token cotangents ``g_lse``, ``g_zy``, ``g_sum``.

- ``prepare(hidden, weight, labels, *, bias, class_weights, ignore_index,
  label_smoothing, z_loss, softcap, where, reduction, chunk_size) -> Prepared``:
  every shape / dtype / value check of the public function (trace time), the
  presence mask ``present`` (``where`` and ``ignore_index``), the mask
  ``invalid`` of present tokens whose label is outside ``[0, V)`` (their loss is
  made NaN by `token_losses`), ``labels`` with absent and invalid tokens set to
  0, class weights in the compute dtype, the static
  ``need_sum`` flag and block sizes ``chunk_size`` / ``token_chunk``.
- ``chunk_stats(hidden, weight, bias, labels, class_weights, *, softcap,
  chunk_size, token_chunk, need_sum) -> (m, s, z_y, sum_wz)``: forward over a
  vocabulary *slice* ``weight (V_local, D)``; ``labels`` local to the slice
  (labels outside ``[0, V_local)`` add 0); ``m`` running max, ``s = sum exp(z -
  m)``. Combine shards with ``M = pmax(m)``, ``S = psum(s * exp(m - M))``,
  ``psum`` of ``z_y`` and ``sum_wz``; ``lse_from_stats(M, S)``.
- ``chunk_grads(hidden, weight, bias, labels, class_weights, lse, g_lse, g_zy,
  g_sum, *, softcap, chunk_size, token_chunk, weight_grad_dtype=None) ->
  (d_hidden, d_weight, d_bias, d_class_weights)``: backward over a slice given the
  global ``lse`` and the per-token cotangents; ``d_hidden`` is a float32 partial
  sum (``psum`` over vocabulary shards).
- ``token_losses(lse, z_y, sum_wz, labels, class_weights, *, num_classes,
  label_smoothing, z_loss) -> (loss, w_y)``: per-token loss and its ``"mean"``
  denominator weight (``class_weights[labels]`` or None), exactly as
  `jaxce.sparse_softmax_cross_entropy` composes them; feed to ``reduce_loss``.
- ``fused_stats(hidden, weight, bias, labels, class_weights, softcap,
  chunk_size, token_chunk, need_sum) -> (lse, z_y, sum_wz)``: the custom_vjp.
- ``default_chunks(n, v, chunk_size) -> (chunk_size, token_chunk)``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._fused_chunks import (
    chunk_grads as chunk_grads,
    chunk_stats as chunk_stats,
    default_chunks as default_chunks,
    lse_from_stats as lse_from_stats,
    nan_where as nan_where,
    out_of_range,
)
from ._fused_tokens import token_path_loss
from ._options import (
    Number,
    Reduction,
    ScalarLike,
    as_float_input,
    check_class_weights,
    check_integer_labels,
    check_label_smoothing,
    check_nonneg,
    check_reduction,
    compute_dtype,
    element_mask,
    is_static_zero,
    reduce_loss,
)


class Prepared(NamedTuple):
    hidden: Array
    weight: Array
    bias: Array | None
    labels: Array  # absent and out-of-range tokens set to 0
    present: Array
    invalid: Array  # present tokens whose label is outside [0, V)
    class_weights: Array | None  # compute dtype
    softcap: float | None
    chunk_size: int
    token_chunk: int
    need_sum: bool
    dtype: jnp.dtype  # compute dtype


def _check_2d(x: Array, name: str, dims: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D {dims}, got shape {x.shape}.")


def prepare(
    hidden,
    weight,
    labels,
    *,
    bias,
    class_weights,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    where,
    reduction,
    chunk_size,
) -> Prepared:
    """Check the public arguments (trace time) and normalise them."""
    hidden = as_float_input(hidden, "hidden")
    weight = as_float_input(weight, "weight")
    labels = jnp.asarray(labels)
    _check_2d(hidden, "hidden", "(tokens, features)")
    _check_2d(weight, "weight", "(vocab, features) like nn.Linear")
    (n, d), v = hidden.shape, weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(
            f"`weight` {weight.shape} must be (vocab, features) with the features of "
            f"`hidden` {hidden.shape}: got {weight.shape[1]} != {d}."
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(
            f"`hidden` and `weight` must have the same dtype, got {hidden.dtype} and "
            f"{weight.dtype}; cast one of them."
        )
    check_integer_labels(labels)
    if labels.shape != (n,):
        raise ValueError(
            f"`labels` must have shape ({n},) (one per row of `hidden`), got "
            f"{labels.shape}."
        )
    dtype = compute_dtype(hidden.dtype)
    if bias is not None:
        bias = as_float_input(bias, "bias")
        if bias.shape != (v,):
            raise ValueError(f"`bias` must have shape ({v},), got {bias.shape}.")
    cw = check_class_weights(class_weights, v, dtype)
    check_label_smoothing(label_smoothing)
    check_nonneg(z_loss, "z_loss")
    check_reduction(reduction)
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
            raise TypeError(f"`softcap` must be None or a number, got {softcap!r}.")
        if not softcap > 0:
            raise ValueError(f"`softcap` must be > 0, got {softcap!r}.")
        softcap = float(softcap)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
    ):
        raise TypeError(f"`chunk_size` must be None or an int, got {chunk_size!r}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
    if where is not None and jnp.shape(where) != (n,):
        raise ValueError(
            f"`where` must be a per-token mask of shape ({n},), got {jnp.shape(where)}."
        )
    present = element_mask(where, (n,))
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int, got {ignore_index!r}.")
        present = present & (labels != ignore_index)
    invalid = present & out_of_range(labels, v)
    # The default int dtype: the kernels compare labels with jnp.arange indices.
    int_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
    labels = jnp.where(present & ~invalid, labels, 0).astype(int_dtype)
    need_sum = not is_static_zero(label_smoothing)
    c, t = default_chunks(n, v, chunk_size)
    return Prepared(
        hidden, weight, bias, labels, present, invalid, cw, softcap, c, t, need_sum,
        dtype,
    )  # fmt: skip


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def fused_stats(hidden, weight, bias, labels, class_weights, softcap, c, t, need_sum):
    """``(lse, z_y, sum_wz)`` per token; gradients by chunked recomputation."""
    m, s, zy, sw = chunk_stats(
        hidden, weight, bias, labels, class_weights,
        softcap=softcap, chunk_size=c, token_chunk=t, need_sum=need_sum,
    )  # fmt: skip
    return lse_from_stats(m, s), zy, sw


def _stats_fwd(hidden, weight, bias, labels, class_weights, softcap, c, t, need_sum):
    out = _stats(hidden, weight, bias, labels, class_weights, softcap, c, t, need_sum)
    return out, (hidden, weight, bias, labels, class_weights, out[0])


def _stats_bwd(softcap, c, t, need_sum, res, cts):
    hidden, weight, bias, labels, class_weights, lse = res
    g_lse, g_zy, g_sum = cts
    dh, dw, db, dcw = chunk_grads(
        hidden, weight, bias, labels, class_weights, lse, g_lse, g_zy,
        g_sum if need_sum else None,
        softcap=softcap, chunk_size=c, token_chunk=t,
    )  # fmt: skip
    dh = dh.astype(hidden.dtype)
    db = None if bias is None or db is None else db.astype(bias.dtype)
    if class_weights is not None:
        dcw = (
            jnp.zeros_like(class_weights)
            if dcw is None
            else dcw.astype(class_weights.dtype)
        )
    return dh, dw, db, None, dcw


fused_stats.defvjp(_stats_fwd, _stats_bwd)


def _stats(*args) -> tuple[Array, Array, Array]:
    """`fused_stats` with its result typed (for pyright)."""
    return cast(tuple[Array, Array, Array], fused_stats(*args))


def token_losses(
    lse: Array,
    z_y: Array,
    sum_wz: Array,
    labels: Array,
    class_weights: Array | None,
    *,
    num_classes: int,
    label_smoothing,
    z_loss,
    invalid: Array | None = None,
    w_y: Array | None = None,
) -> tuple[Array, Array | None]:
    """Per-token loss from the statistics, and its ``"mean"`` weight ``w_y``.

    Tokens marked ``invalid`` (a present label outside ``[0, V)``) get a NaN loss.
    ``w_y`` (``class_weights[labels]``) may be passed in when it was gathered
    elsewhere (the vocabulary-parallel loss all-reduces it); ``num_classes`` is
    the global vocabulary size.
    """
    dtype = lse.dtype
    if class_weights is None:
        w_y = None
    elif w_y is None:
        w_y = class_weights[labels]
    nll = lse - z_y if w_y is None else w_y * (lse - z_y)
    if not is_static_zero(label_smoothing):
        eps = jnp.asarray(label_smoothing, dtype)
        k = jnp.asarray(num_classes, dtype)
        total_w = k if class_weights is None else jnp.sum(class_weights)
        # sum_c w_c (lse - z_c) = lse * sum_c w_c - sum_c w_c z_c
        nll = (1 - eps) * nll + eps / k * (lse * total_w - sum_wz)
    if not is_static_zero(z_loss):
        nll = nll + jnp.asarray(z_loss, dtype) * jnp.square(lse)
    return nan_where(invalid, nll), w_y


def linear_softmax_cross_entropy(
    hidden: Float[ArrayLike, "_tokens _features"],
    weight: Float[ArrayLike, "_vocab _features"],
    labels: Int[ArrayLike, " _tokens"],
    *,
    bias: Float[ArrayLike, " _vocab"] | None = None,
    class_weights: Float[ArrayLike, " _vocab"] | None = None,
    ignore_index: int | None = None,
    label_smoothing: ScalarLike = 0.0,
    z_loss: ScalarLike = 0.0,
    softcap: Number | None = None,
    where: Bool[ArrayLike, " _tokens"] | None = None,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
    vocab_axis: str | tuple[str, ...] | None = None,
) -> Float[Array, "..."]:
    r"""Linear layer + sparse softmax cross-entropy without materialising logits.

    Equal (value and gradients w.r.t. ``hidden``, ``weight``, ``bias`` and
    ``class_weights``) to

        sparse_softmax_cross_entropy(z, labels, ...),
        z = hidden @ weight.T + bias          (softcap c: z = c * tanh(z / c))

    i.e. per token, with $\operatorname{lse} = \log\sum_c e^{z_c}$ over the $V$
    classes, class weights $w$ and smoothing $\varepsilon$:

    $$L = (1 - \varepsilon)\, w_y (\operatorname{lse} - z_y)
        + \frac{\varepsilon}{V} \sum_c w_c (\operatorname{lse} - z_c)
        + \lambda\, \operatorname{lse}^2$$

    reduced as in `jaxce.sparse_softmax_cross_entropy` (``"mean"`` divides by
    the sum of $w_y$ over present tokens, PyTorch's ``F.cross_entropy``).

    Not differentiated, the logits are formed in ``chunk_size``-class blocks
    (and, for many tokens, token blocks of ~4 Mi logits in all) with float32
    accumulation (``preferred_element_type``), also for bf16 / fp16 input; the
    softmax statistics are accumulated online; no gradient work is done.

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
        weight: ``(V, D)`` classifier (PyTorch ``nn.Linear`` layout), same dtype as
            ``hidden``.
        labels: ``(N,)`` integer classes in ``[0, V)``. A present label outside
            ``[0, V)`` (not ``ignore_index``, not masked by ``where``) is not
            wrapped or clipped: that token's loss is NaN (as in
            `jaxce.sparse_softmax_cross_entropy`), so the reduced loss is NaN,
            and so are the gradients it reaches, on every path (differentiated
            or not, sharded or not). For a clear run-time error instead, check
            the labels with `jaxce.validate`.
        bias: ``(V,)`` or None.
        class_weights: ``(V,)`` per-class weights $w$.
        ignore_index: label marking absent tokens (PyTorch ``-100``).
        label_smoothing: $\varepsilon \in [0, 1)$, towards uniform over $V$.
        z_loss: $\lambda \ge 0$, weight of ``lse**2`` (PaLM).
        softcap: $c > 0$: logits ``c * tanh(z / c)`` (Gemma 2), or None.
        where: ``(N,)`` boolean **per-token** mask (False tokens are absent); there
            is no per-class mask here.
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        chunk_size: classes per block (of the statistics pass, of the
            recompute backward and of the ``dW`` update in the token-chunked
            gradient pass); None picks 2048 (clipped to ``V``). ``V`` need not be
            a multiple of it. The token chunk of the gradient pass is automatic.
        mesh, batch_axis, vocab_axis: run vocabulary- / data-parallel under
            ``shard_map`` (see ``jaxce/_fused_sharded.py``); ``mesh=None`` runs
            on one device. With a mesh of ``Explicit`` axes (the default of
            ``jax.make_mesh``), an *eager* ``jax.grad`` must run inside
            ``with jax.set_mesh(mesh):`` (or under ``jax.jit``): outside it JAX
            cannot form the cotangent of an explicitly sharded output ("Length
            of device assignment 1 is not equal to the size of the mesh").

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

    References:
        Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*
        (Cut Cross-Entropy), 2024, https://arxiv.org/abs/2411.09009;
        Hsu et al., *Liger Kernel*, 2024, https://arxiv.org/abs/2410.10989.
    """
    kwargs = dict(
        bias=bias, class_weights=class_weights, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        where=where, reduction=reduction, chunk_size=chunk_size,
    )  # fmt: skip
    if mesh is not None:
        from ._fused_sharded import sharded_linear_softmax_cross_entropy

        return sharded_linear_softmax_cross_entropy(
            hidden, weight, labels, mesh=mesh, batch_axis=batch_axis,
            vocab_axis=vocab_axis, **kwargs,
        )  # fmt: skip
    if batch_axis is not None or vocab_axis is not None:
        raise ValueError("`batch_axis` / `vocab_axis` need a `mesh`.")
    p = prepare(hidden, weight, labels, **kwargs)
    if reduction != "none":
        return token_path_loss(
            p, label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction
        )
    lse, z_y, sum_wz = _stats(
        p.hidden, p.weight, p.bias, p.labels,
        p.class_weights if p.need_sum else None,
        p.softcap, p.chunk_size, p.token_chunk, p.need_sum,
    )  # fmt: skip
    loss, w_y = token_losses(
        lse, z_y, sum_wz, p.labels, p.class_weights,
        num_classes=p.weight.shape[0], label_smoothing=label_smoothing, z_loss=z_loss,
        invalid=p.invalid,
    )  # fmt: skip
    return reduce_loss(
        loss,
        present=p.present,
        weights=None,
        denom_weights=w_y,
        reduction=reduction,
        base=None,
        out_dtype=p.hidden.dtype,
    )
