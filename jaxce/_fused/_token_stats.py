"""`linear_token_stats`: per-token log-probabilities, entropies and argmax, fused.

The statistics RL fine-tuning needs (PPO / GRPO: the log-probability of the
sampled token, the entropy bonus, the greedy token) from ``hidden`` and the
output projection, without the ``(N, V)`` logits: `._stat_blocks.stats_pass`
streams the vocabulary, a ``jax.custom_vjp`` saves three numbers per token
(``lse`` as ``max + log sum``, and ``H``) and its backward recomputes each block
(`._stat_blocks.grads_pass`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial
from typing import Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import (
    IndexLike,
    Number,
    batch_spec,
    compute_dtype,
    explicitly_sharded,
    nan_where,
    out_of_range,
    run_auto,
)
from ._block_sizes import block_sizes, check_budget, check_chunk_size
from ._head import check_head, check_weight_layout
from ._mesh import AxisName, Layout, layout_or_none, pad_rows
from ._stat_blocks import Cotangents, Raw, StatConfig, StatOperands
from ._stats_parallel import run_grads, run_stats, specs
from ._weight_layout import class_axis, num_classes

WeightLayout = Literal["vd", "dv"]
"""``"vd"``: weight ``(V, D)`` (``nn.Linear``, tied embeddings); ``"dv"``:
``(D, V)`` (a Flax ``nnx.Linear`` kernel)."""


class TokenStats(NamedTuple):
    """Per-token statistics of the tempered logits (each ``(N,)``).

    Attributes:
        logprob: ``log softmax(z)[label]`` (input dtype).
        entropy: ``H(softmax(z)) = lse - sum_c p_c z_c`` in nats (input dtype).
        logsumexp: ``logsumexp(z)`` (input dtype).
        argmax: the greedy token ``argmax_c z_c``, int32 (first index on ties).
    """

    logprob: Float[Array, " _tokens"]
    entropy: Float[Array, " _tokens"]
    logsumexp: Float[Array, " _tokens"]
    argmax: Int[Array, " _tokens"]


def _positive_number(value: object, name: str) -> float:
    """``value`` as a float: a finite Python / NumPy number > 0 (trace time)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a positive number, got {value!r}.")
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return x


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float; a finite number > 0 known at trace time."""
    return _positive_number(temperature, "temperature")


def check_softcap(softcap: object) -> float | None:
    """``softcap`` as a float (or None); a finite number > 0."""
    return None if softcap is None else _positive_number(softcap, "softcap")


def _prepare(hidden, weight, labels, bias, where, layout):
    """Checked ``(StatOperands, invalid)``; ``invalid``: present, label out of range."""
    head = check_head(hidden, weight, labels, bias, where, layout)
    present, labels = head.present, head.labels
    invalid = present & out_of_range(labels, head.num_classes)
    int_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
    labels = jnp.where(present & ~invalid, labels, 0).astype(int_dtype)
    ops = StatOperands(head.hidden, head.weight, head.bias, labels, present)
    return ops, invalid


def _masked(raw: Raw, present: Array, dtype) -> Raw:
    """Absent tokens' statistics set to 0; floats cast to ``dtype``."""
    zero = jnp.zeros((), raw.lse.dtype)
    lp, ent, lse = (jnp.where(present, x, zero).astype(dtype) for x in raw[:3])
    return Raw(lp, ent, lse, jnp.where(present, raw.argmax, 0))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def fused_token_stats(lay: Layout | None, cfg: StatConfig, ops: StatOperands) -> Raw:
    """`Raw` ``(logprob, entropy, lse, argmax)``, absent tokens 0; the input dtype.

    Differentiable in ``hidden``, ``weight`` and ``bias`` (recompute-in-backward);
    on one device (``lay`` None) or vocabulary-parallel on ``lay``'s mesh.
    """
    return _masked(run_stats(lay, cfg, ops)[0], ops.present, ops.hidden.dtype)


def _fwd(lay: Layout | None, cfg: StatConfig, ops: StatOperands):
    raw, shift = run_stats(lay, cfg, ops)
    out = _masked(raw, ops.present, ops.hidden.dtype)
    return out, (ops, shift, raw.entropy)


def _bwd(lay: Layout | None, cfg: StatConfig, res, cts):
    ops, shift, entropy = res
    zero = jnp.zeros((), entropy.dtype)
    g = Cotangents(
        *(jnp.where(ops.present, ct.astype(entropy.dtype), zero) for ct in cts[:3])
    )
    dh, dw, db = run_grads(lay, cfg, ops, shift, entropy, g)
    bias = ops.bias
    db = None if bias is None or db is None else db.astype(bias.dtype)
    grads = (dh.astype(ops.hidden.dtype), dw, db, None, None)
    return (StatOperands._make(grads),)  # no gradient for labels / present


fused_token_stats.defvjp(_fwd, _bwd)


def _sharded(lay: Layout, ops: StatOperands, chunk, budget, cap, tau) -> Raw:
    """`fused_token_stats` on ``lay``'s mesh, sizes the mesh does not divide padded.

    Padding tokens are absent; padding classes (zero rows / columns of
    ``weight``, zero bias) are masked out of every statistic (`Layout.num_classes`).
    The padding is inside the differentiated function: the transpose of the pad
    slices it off the gradients.
    """
    nb, nv = lay.size(lay.batch_axis), lay.size(lay.vocab_axis)
    n = ops.hidden.shape[0]
    lay, n_pad, v_pad = lay.padded(n, num_classes(ops.weight, lay.weight_layout))
    ops = StatOperands(
        pad_rows(ops.hidden, n_pad),
        pad_rows(ops.weight, v_pad, class_axis(lay.weight_layout)),
        None if ops.bias is None else pad_rows(ops.bias, v_pad),
        pad_rows(ops.labels, n_pad),
        pad_rows(ops.present, n_pad),
    )
    ops = StatOperands._make(map(lay.place, ops, specs(lay, ops)))
    blocks = block_sizes(n_pad // nb, v_pad // nv, chunk, budget)
    cfg = StatConfig(cap, tau, lay.weight_layout, blocks.chunk_size, blocks.token_chunk)
    raw = cast(Raw, fused_token_stats(lay, cfg, ops))
    return Raw(*(lay.unpad(x, n) for x in raw))


def linear_token_stats(
    hidden: Float[ArrayLike, "_tokens _features"],
    weight: Float[ArrayLike, "_vocab _features"] | Float[ArrayLike, "_features _vocab"],
    labels: Int[ArrayLike, " _tokens"],
    *,
    bias: Float[ArrayLike, " _vocab"] | None = None,
    temperature: Number = 1.0,
    softcap: Number | None = None,
    where: Bool[ArrayLike, " _tokens"] | None = None,
    chunk_size: IndexLike | Literal["auto"] | None = None,
    memory_budget_bytes: int | None = None,
    weight_layout: WeightLayout = "vd",
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: AxisName = None,
    vocab_axis: AxisName = None,
) -> TokenStats:
    r"""Per-token log-probability, entropy, logsumexp and argmax of a linear layer.

    The statistics of policy-gradient fine-tuning (PPO, GRPO: the sampled
    token's log-probability, the entropy bonus, the greedy token) without the
    ``(N, V)`` logits. Per token $n$, with the logits

    $$x = h W^\top + b, \qquad z = c \tanh(x / c) / \tau$$

    (soft cap $c$ first, as Gemma, then the temperature $\tau$; no soft cap:
    $z = x / \tau$), $p = \operatorname{softmax}(z)$ and
    $\operatorname{lse} = \log \sum_c e^{z_c}$:

    $$\text{logprob}_n = z_{y_n} - \operatorname{lse}_n, \qquad
      H_n = \operatorname{lse}_n - \textstyle\sum_c p_c z_c, \qquad
      \text{argmax}_n = \operatorname{argmax}_c z_c.$$

    The vocabulary is streamed in ``chunk_size``-class blocks (token blocks of
    ~16 Mi logits for many tokens) with online accumulators (running max,
    ``sum exp``, ``sum exp * (z - max)``, running argmax), in float32 for
    bf16 / fp16 input (``preferred_element_type``), so memory is O(block), not
    O(N V).

    Gradients (a ``jax.custom_vjp``; ``argmax`` has none): the forward saves
    ``lse`` (as ``max + log sum exp``, so ``log p`` stays accurate for large
    logits) and $H$ per token, and the backward recomputes each block. With
    cotangents $\bar a$ (logprob), $\bar b$ (entropy), $\bar l$ (logsumexp) and
    $E = \sum_c p_c z_c$:

    $$\frac{\partial}{\partial z_c} = \bar a ([c = y] - p_c)
        - \bar b\, p_c (z_c - E) + \bar l\, p_c$$

    then times $1/\tau$ (temperature) and $1 - \tanh^2(x_c / c)$ (soft cap) for
    $\bar x$, and $\bar h = \bar x W$, $\bar W = \bar x^\top h$,
    $\bar b_{\text{bias}} = \sum_n \bar x_n$, block by block (four matmuls with
    the forward). So ``jax.grad`` of any ``sum(a * logprob + b * entropy + l *
    logsumexp)`` equals the unfused computation;
    `jaxce.closed_form.token_stats_logits_grad` writes $\bar x$ out. ``jit``,
    ``grad`` and ``vmap`` work; forward-mode autodiff does not.

    Args:
        hidden: ``(N, D)`` activations.
        weight: the output projection, same dtype as ``hidden``: ``(V, D)`` for
            ``weight_layout="vd"``, ``(D, V)`` for ``"dv"``.
        labels: ``(N,)`` integer tokens in ``[0, V)``. A present label outside
            ``[0, V)`` is not wrapped or clipped: its ``logprob`` is NaN (as
            the loss of `jaxce.sparse_softmax_cross_entropy`), so is any
            objective that uses it, even with weight 0, and so is every
            gradient that flows through it (all of ``weight``'s); its entropy,
            logsumexp and argmax do not depend on the label and stay finite.
            Check labels with `jaxce.validate` for a clear error.
        bias: ``(V,)`` or None. ``-inf`` entries (banned tokens) are out of the
            softmax, with finite entropies and gradients; with a ``softcap``
            they are not: the cap maps a ``-inf`` logit to ``-c`` (the formula
            above, as the unfused ``c * tanh(x / c)``), a class with a small
            probability.
        temperature: $\tau$, a finite Python / NumPy number > 0 known at
            trace time (the sampling temperature); it does not change
            ``argmax``.
        softcap: $c > 0$: logits ``c * tanh(x / c)`` (Gemma 2), or None.
        where: ``(N,)`` boolean: False tokens (padding, prompt) are absent: 0 in
            ``logprob``, ``entropy`` and ``logsumexp``, ``argmax`` 0, and no
            gradient flows from them (their rows of ``d_hidden`` are 0).
        chunk_size: classes per vocabulary block, an integer >= 1; None picks
            2048 (clipped to ``V``); ``"auto"``: from the element budget ``B``
            (below), ``sqrt(B)`` classes rounded down to a multiple of 128 (at
            least 128, at most ``V``). A block has ``max(256, B // chunk)``
            tokens (at most ``N``). Results do not depend on it.
        memory_budget_bytes: bytes for the logits blocks, an int >= 1; None:
            256 MiB. As in `jaxce.linear_softmax_cross_entropy`: the element
            budget is ``B = memory_budget_bytes // (4 * itemsize)`` of the
            compute dtype (``B = 2**24`` by default in float32). Results do
            not depend on it.
        weight_layout: ``"vd"`` (PyTorch ``nn.Linear``, tied embeddings) or
            ``"dv"`` (a Flax ``nnx.Linear`` kernel: its columns are sliced per
            block, never transposed as a whole).
        mesh, batch_axis, vocab_axis: vocabulary- / data-parallel under
            ``shard_map``, as in `jaxce.linear_softmax_cross_entropy`:
            ``hidden`` / ``labels`` / ``where`` split over ``batch_axis``,
            ``weight`` / ``bias`` over ``vocab_axis`` (either may be None:
            replicated; they must not share mesh axes). Each device streams
            its own vocabulary block and only per-token accumulators are
            all-reduced (``pmax`` of the max, ``psum`` of the rescaled sums,
            ``pmin`` of the argmax among the blocks holding the max: ties
            still go to the first index); the backward recomputes the blocks.
            Neither ``weight`` nor the logits are gathered; the statistics
            come back split over ``batch_axis`` and the gradients like their
            inputs. Any ``N`` and ``V``: sizes the axes do not divide are
            padded inside (padding classes are out of the softmax; a padded
            size is replicated, as there). ``Auto`` and ``Explicit`` meshes.
            ``mesh=None``: one device (explicitly sharded input then runs with
            the mesh's axes as ``Auto``, partitioned by the compiler).

    Returns:
        `TokenStats` ``(logprob, entropy, logsumexp, argmax)``, each ``(N,)``:
        the first three in the dtype of ``hidden`` (computed in float32 for
        bf16 / fp16; cast up ``hidden`` and ``weight`` for float32 results),
        ``argmax`` int32. Gradients come back in the input dtypes (``d_weight``
        in the layout of ``weight``); for bf16 / fp16 the logits cotangent is
        cast to the input dtype before its two matmuls, as the unfused bf16
        backward does.

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
        >>> w = jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 1.0], [2.0, 0.0]])
        >>> y = jnp.array([0, 3, 2])
        >>> s = jaxce.linear_token_stats(h, w, y, chunk_size=3)
        >>> print(s.logprob, s.entropy, s.argmax)
        [-1.44019 -0.40132 -0.91758] [0.94754 0.98777 1.17267] [3 3 0]

        The third token's logits tie classes 0 and 2: the first wins, as in
        ``jnp.argmax``. The same log-probabilities from the full logits:

        >>> print(jax.nn.log_softmax(h @ w.T)[jnp.arange(3), y])
        [-1.44019 -0.40132 -0.91758]

        A PPO-style objective, with an entropy bonus, differentiated:

        >>> adv = jnp.array([1.0, -0.5, 2.0])
        >>> def objective(w):
        ...     s = jaxce.linear_token_stats(h, w, y, temperature=0.7)
        ...     return jnp.sum(adv * s.logprob + 0.01 * s.entropy)
        >>> print(jax.grad(objective)(w)[0])
        [ 1.20514 -2.56065]

        A Flax kernel ``(D, V)`` gives the same statistics:

        >>> s2 = jaxce.linear_token_stats(h, w.T, y, weight_layout="dv")
        >>> print(s2.logprob)
        [-1.44019 -0.40132 -0.91758]

        Vocabulary-parallel over every device, the same statistics:

        >>> import numpy as np
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
        >>> s3 = jaxce.linear_token_stats(h, w, y, mesh=mesh, vocab_axis="vocab")
        >>> print(s3.logprob, s3.argmax)
        [-1.44019 -0.40132 -0.91758] [3 3 0]

    References:
        Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*
        (Cut Cross-Entropy), 2024, https://arxiv.org/abs/2411.09009.
    """
    lay = layout_or_none(mesh, batch_axis, vocab_axis)
    arrays = (hidden, weight, labels, bias, where)
    if lay is None and explicitly_sharded(*arrays):  # kernels with Auto axes
        spec = batch_spec(hidden)
        return run_auto(
            lambda h, w, y, b, m: linear_token_stats(
                h, w, y, bias=b, temperature=temperature, softcap=softcap,
                where=m, chunk_size=chunk_size,
                memory_budget_bytes=memory_budget_bytes, weight_layout=weight_layout,
            ),
            arrays,
            TokenStats(spec, spec, spec, spec),  # type: ignore[arg-type]
        )  # fmt: skip
    layout = check_weight_layout(weight_layout)
    tau = check_temperature(temperature)
    cap = check_softcap(softcap)
    chunk = check_chunk_size(chunk_size)
    ops, invalid = _prepare(hidden, weight, labels, bias, where, layout)
    budget = check_budget(memory_budget_bytes, compute_dtype(ops.hidden.dtype))
    if lay is not None:
        lay = dataclasses.replace(lay, weight_layout=layout)
        raw = _sharded(lay, ops, chunk, budget, cap, tau)
    else:
        n, v = ops.hidden.shape[0], num_classes(ops.weight, layout)
        blocks = block_sizes(n, v, chunk, budget)
        cfg = StatConfig(cap, tau, layout, blocks.chunk_size, blocks.token_chunk)
        raw = cast(Raw, fused_token_stats(None, cfg, ops))
    # Multiplied by NaN outside the custom_vjp: the gradient that reaches an
    # invalid token's logprob is NaN too (its entropy / lse are unaffected).
    logprob = nan_where(invalid, raw.logprob)
    return TokenStats(logprob, raw.entropy, raw.lse, raw.argmax)
