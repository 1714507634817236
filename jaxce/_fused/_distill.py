"""`linear_distillation_loss`: the fused linear -> distillation loss and its checks.

The kernels (token chunks, the two ``jax.custom_vjp``) are in `_distill_chunks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import (
    IndexLike,
    Number,
    Reduction,
    ScalarLike,
    as_float_input,
    batch_spec,
    check_ignore_index,
    compute_dtype,
    element_mask,
    explicitly_sharded,
    make_reducer,
    run_auto,
)
from .._distillation import Kind, check_divergence
from . import _block_sizes
from ._block_sizes import block_sizes, check_budget, check_chunk_size
from ._distill_chunks import DistillStatic, Model, scalar_distill, token_distill
from ._mesh import AxisName, Layout, layout_or_none, pad_rows


def _model(hidden, weight, bias, who: str) -> Model:
    """One model's ``(N, D)`` hidden, ``(V, D)`` weight and ``(V,)`` bias, checked."""
    h = as_float_input(hidden, f"{who}_hidden")
    w = as_float_input(weight, f"{who}_weight")
    if h.ndim != 2:
        raise ValueError(
            f"`{who}_hidden` must be 2-D (tokens, features), got shape {h.shape}."
        )
    if w.ndim != 2:
        raise ValueError(
            f"`{who}_weight` must be 2-D (vocab, features) like nn.Linear, got "
            f"shape {w.shape}."
        )
    if w.shape[1] != h.shape[1]:
        raise ValueError(
            f"`{who}_weight` {w.shape} must be (vocab, features) with the features "
            f"of `{who}_hidden` {h.shape}: got {w.shape[1]} != {h.shape[1]}."
        )
    if h.dtype != w.dtype:
        raise TypeError(
            f"`{who}_hidden` and `{who}_weight` must have the same dtype, got "
            f"{h.dtype} and {w.dtype}; cast one of them."
        )
    b = None
    if bias is not None:
        b = as_float_input(bias, f"{who}_bias")
        if b.shape != (w.shape[0],):
            raise ValueError(
                f"`{who}_bias` must have shape ({w.shape[0]},), got {b.shape}."
            )
    return Model(h, w, b)


def _present(n: int, labels, ignore_index, where) -> Array:
    """The per-token presence mask from ``where`` and ``labels == ignore_index``."""
    if where is not None and jnp.shape(where) != (n,):
        raise ValueError(
            f"`where` must be a per-token mask of shape ({n},), got {jnp.shape(where)}."
        )
    present = element_mask(where, (n,))
    ignore = check_ignore_index(ignore_index)
    if (labels is None) != (ignore is None):
        raise ValueError(
            "`labels` only mark ignored tokens: pass both `labels` and "
            "`ignore_index`, or neither (use `where` for a boolean mask)."
        )
    if labels is not None:
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                "`labels` only mark ignored tokens (those equal to `ignore_index`) "
                f"and must be integers, got dtype {labels.dtype}."
            )
        if labels.shape != (n,):
            raise ValueError(
                f"`labels` must have shape ({n},) (one per token), got {labels.shape}."
            )
        present = present & (labels != ignore)
    return present


def _on_mesh(lay: Layout, d, chunk, budget, student: Model, teacher: Model, present):
    """The models and mask padded to the mesh and placed on it; the static
    configuration of one device's block.

    Padding tokens are absent; padding classes (zero rows of both weights and
    biases) are masked to ``-inf`` logits in the kernel (`Layout.num_classes`).
    The padding is inside the differentiated function: its transpose slices the
    gradients back.
    """
    nb, nv = lay.size(lay.batch_axis), lay.size(lay.vocab_axis)
    (n, _), v = student.hidden.shape, student.weight.shape[0]
    lay, n_pad, v_pad = lay.padded(n, v)
    vocab = P(lay.vocab_axis)

    def put(m: Model) -> Model:  # weights (V, D): the "vd" layout
        h = lay.place(pad_rows(m.hidden, n_pad), lay.hidden_spec())
        w = lay.place(pad_rows(m.weight, v_pad), lay.weight_spec())
        b = None if m.bias is None else lay.place(pad_rows(m.bias, v_pad), vocab)
        return Model(h, w, b)

    present = lay.place(pad_rows(present, n_pad), lay.row())
    blocks = block_sizes(n_pad // nb, v_pad // nv, chunk, _budget(budget))
    st = DistillStatic(d, blocks.token_path_chunk, blocks.chunk_size, lay)
    return put(student), put(teacher), present, st


def _budget(budget: int | None) -> int:
    """Two ``(T, V)`` blocks (student and teacher) share the one element budget
    (``budget``; None: `BLOCK_ELEMENTS`)."""
    return max(1, (_block_sizes.BLOCK_ELEMENTS if budget is None else budget) // 2)


def linear_distillation_loss(
    student_hidden: Float[ArrayLike, "_tokens _student_features"],
    student_weight: Float[ArrayLike, "_vocab _student_features"],
    teacher_hidden: Float[ArrayLike, "_tokens _teacher_features"],
    teacher_weight: Float[ArrayLike, "_vocab _teacher_features"],
    *,
    kind: Kind = "forward_kl",
    beta: Number = 0.5,
    temperature: Number = 1.0,
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
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: AxisName = None,
    vocab_axis: AxisName = None,
) -> Float[Array, "..."]:
    r"""Student and teacher linear heads + distillation loss, without the logits.

    Equal (value and gradients) to

        distillation_loss(z_s, z_t, ...),
        z_s = student_hidden @ student_weight.T + student_bias,
        z_t = teacher_hidden @ teacher_weight.T + teacher_bias

    (see `jaxce.distillation_loss`). Per token, with $p_s =
    \operatorname{softmax}(z_s / \tau)$ and $p_t = \operatorname{softmax}(z_t /
    \tau)$: ``"forward_kl"`` $\mathrm{KL}(p_t \,\|\, p_s)$, ``"reverse_kl"``
    $\mathrm{KL}(p_s \,\|\, p_t)$, ``"jsd"`` $\beta\, \mathrm{KL}(p_t \,\|\, m)
    + (1 - \beta)\, \mathrm{KL}(p_s \,\|\, m)$ with $m = \beta p_t + (1 - \beta)
    p_s$; no $\tau^2$ factor. The two models may have different feature sizes;
    they share the vocabulary.

    Liger Kernel: ``LigerFusedLinearJSD(jsd_beta=b, ignore_index=i,
    temperature=tau)(hs, ws, ht, wt, labels)`` is ``linear_distillation_loss(hs,
    ws, ht, wt, kind="jsd", beta=b, temperature=tau, labels=labels,
    ignore_index=i)`` (``"mean"``: divided by the number of tokens whose label
    is not ``ignore_index``; with none left jaxce gives 0 where Liger divides by
    0). ``labels`` only mark ignored tokens here.

    Both models' logits are formed together ``T`` tokens at a time over the
    whole vocabulary, in float32 (float64 for float64 input), ``T`` from the
    fused loss's one element budget, shared by the two models (each ``(T, V)``
    block is ~8 Mi elements; all tokens when ``N * V`` is smaller), never
    ``(N, V)`` at once. Per chunk the analytic gradient w.r.t. the student
    logits (forward KL: $(p_s - p_t) / \tau$; reverse KL: $p_s (\log p_s -
    \log p_t - \mathrm{KL}) / \tau$; JSD: $(1 - \beta)\, p_s (\log p_s - \log m -
    \mathrm{KL}(p_s \,\|\, m)) / \tau$) times the reduction's coefficient gives
    ``dH = dz @ W`` and ``dW += dz.T @ H`` (in ``chunk_size``-class slices).
    With a scalar ``reduction`` this happens in the forward pass (as Liger
    does) and the backward only scales the saved gradients by the cotangent;
    with ``"none"`` the backward walks the chunks again. The teacher is a
    constant: its hidden, weight and bias get zero gradients; ``weights`` and
    ``normalizer`` get theirs. With a scalar ``reduction``, student gradients
    that are not asked for (e.g. a frozen ``student_weight``) are skipped, their
    matmul included. ``jit``, ``grad`` and ``vmap`` work; forward-mode autodiff
    does not (a ``jax.custom_vjp``): use `jaxce.distillation_loss` for that.

    Args:
        student_hidden: ``(N, D_s)`` student activations.
        student_weight: ``(V, D_s)`` student classifier, dtype of
            ``student_hidden``.
        teacher_hidden: ``(N, D_t)`` teacher activations.
        teacher_weight: ``(V, D_t)`` teacher classifier, dtype of
            ``teacher_hidden``.
        kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
        beta: $\beta \in [0, 1]$, the teacher's weight in the JSD mixture
            (``"jsd"`` only; 0 is forward KL and 1 reverse KL, as in Liger).
        temperature: $\tau > 0$.
        student_bias, teacher_bias: ``(V,)`` or None.
        labels: ``(N,)`` integer labels, only to mark ignored tokens (those
            equal to ``ignore_index``, as Liger's ``shift_labels``); give both
            or neither.
        ignore_index: the label of absent tokens (Liger and PyTorch: ``-100``).
        where: ``(N,)`` boolean per-token mask (False tokens are absent).
        weights: ``(N,)`` per-token sample weights.
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"sum_over_batch_size"``.
        normalizer: with a scalar reduction, ``sum(weights * L) / normalizer``.
        base: log base of the result (``None``: nats, ``2``: bits).
        chunk_size: classes per slice of the ``dW`` update (an integer >= 1;
            None: 2048, clipped to ``V``; ``"auto"``: ``sqrt(B / 2)`` classes
            rounded down to a multiple of 128, ``B`` the element budget below,
            which the two models share: 2816 by default). The token chunks are
            automatic. Results do not depend on it.
        memory_budget_bytes: bytes for the logits blocks, an int >= 1; None:
            256 MiB. As in `jaxce.linear_softmax_cross_entropy`, the element
            budget is ``B = memory_budget_bytes // (4 * itemsize)`` of the
            compute dtype, shared by the two models: a token chunk has at most
            ``max(1, B // (2 V))`` tokens. Results do not depend on it.
        mesh, batch_axis, vocab_axis: vocabulary- / data-parallel under
            ``shard_map``, as in `jaxce.linear_softmax_cross_entropy`: both
            models' hidden states (and the per-token arrays) split over
            ``batch_axis``, both weights and biases over ``vocab_axis``
            (either may be None: replicated; they must not share mesh axes).
            Each device forms its vocabulary block of both logits per token
            chunk; the two log-softmax normalisers (``pmax`` / ``psum``) and
            the divergence's row sums (``psum``) are all-reduced per chunk, so
            the per-token losses and the student gradient are the single-device
            ones; ``d_hidden`` is all-reduced over the vocabulary axis and the
            weight / bias gradients over the batch axis, coming back split like
            their inputs. Neither weight nor the logits are gathered. Sizes the
            axes do not divide are padded inside (padding classes are out of
            both softmaxes, padding tokens absent), as there. ``Auto`` and
            ``Explicit`` meshes. ``mesh=None``: one device (explicitly sharded
            input then runs with the mesh's axes as ``Auto``).

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

        Vocabulary-parallel over every device (the 4 classes padded to the
        device count where it does not divide them):

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
                student_bias=sb, teacher_bias=tb, labels=y,
                ignore_index=ignore_index, where=m, weights=w, reduction=reduction,
                normalizer=z, base=base, chunk_size=chunk_size,
                memory_budget_bytes=memory_budget_bytes,
            )  # fmt: skip

        return run_auto(auto, arrays, out)
    d = check_divergence(kind, beta, temperature)
    student = _model(student_hidden, student_weight, student_bias, "student")
    teacher = _model(teacher_hidden, teacher_weight, teacher_bias, "teacher")
    (n, _), v = student.hidden.shape, student.weight.shape[0]
    if teacher.hidden.shape[0] != n:
        raise ValueError(
            f"`teacher_hidden` {teacher.hidden.shape} must have the tokens of "
            f"`student_hidden` {student.hidden.shape}: got "
            f"{teacher.hidden.shape[0]} != {n}."
        )
    if teacher.weight.shape[0] != v:
        raise ValueError(
            f"`teacher_weight` {teacher.weight.shape} must have the vocabulary of "
            f"`student_weight` {student.weight.shape}: got "
            f"{teacher.weight.shape[0]} != {v}."
        )
    chunk = check_chunk_size(chunk_size)
    present = _present(n, labels, ignore_index, where)
    dtype = compute_dtype(student.hidden.dtype, teacher.hidden.dtype)
    budget = check_budget(memory_budget_bytes, dtype)
    reducer = make_reducer(
        present,
        dtype,
        student.hidden.dtype,
        weights=weights,
        reduction=reduction,
        base=base,
        normalizer=normalizer,
    )
    if lay is None:
        blocks = block_sizes(n, v, chunk, _budget(budget))
        st = DistillStatic(d, blocks.token_path_chunk, blocks.chunk_size)
    else:
        student, teacher, present, st = _on_mesh(
            lay, d, chunk, budget, student, teacher, present
        )
    n_pad = present.shape[0]
    if reducer.reduction == "none":
        loss = cast(Callable[..., Array], token_distill)(st, student, teacher, present)
        if st.lay is not None:
            loss = st.lay.unpad(loss, n)
        return reducer.reduce(loss)
    coef = pad_rows(reducer.coefficients(), n_pad)
    fn = cast(Callable[..., Array], scalar_distill)
    return fn(st, student, teacher, coef, present).astype(reducer.out_dtype)
