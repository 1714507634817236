"""`linear_token_stats`: per-token log-probabilities, entropies and argmax, fused.

The statistic `TokenStat` streams the vocabulary with online accumulators per
token: the running max ``m`` of ``z`` (and its first index), with
``d_c = (z_c - m) / tau``, ``s = sum_c exp(d_c)``, ``t = sum_c exp(d_c) d_c``
and the target logit, so that

    lse = m / tau + log s,   logprob = (z_y - m) / tau - log s,   H = log s - t / s

(no cancellation between two large numbers). Its backward recomputes each
block (see `TokenStat.cotangent`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._core import (
    IndexLike,
    Number,
    batch_spec,
    explicitly_sharded,
    nan_where,
    run_auto,
)
from ._engine import (
    AxisName,
    Block,
    Statistic,
    Vocab,
    layout_or_none,
    prepare_call,
    stream,
)

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


@dataclasses.dataclass(frozen=True)
class TokenStat(Statistic):
    """The streamed statistic of `linear_token_stats` at temperature ``tau``."""

    tau: float

    def _d(self, x: Array) -> Array:
        """``x / tau`` for a difference of logits ``x`` (``z - max``)."""
        return x if self.tau == 1.0 else x / jnp.asarray(self.tau, x.dtype)

    def init(self, n: int, cdt):
        z = jnp.zeros((n,), cdt)
        return (jnp.full((n,), -jnp.inf, cdt), z, z, z, jnp.zeros((n,), jnp.int32))

    def update(self, acc, z: Array, blk: Block):
        m, s, t, zy, arg = acc
        zero = jnp.zeros((), z.dtype)
        zm = jnp.where(blk.valid[None, :], z, -jnp.inf)
        b_max, b_arg = jnp.max(zm, axis=-1), jnp.argmax(zm, axis=-1)
        arg = jnp.where(b_max > m, blk.cols[b_arg].astype(jnp.int32), arg)
        m_new = jnp.maximum(m, b_max)
        m0 = jnp.where(jnp.isfinite(m_new), m_new, zero)
        # s = t = 0 while m = -inf: drop the (NaN) shift then
        shift = jnp.where(jnp.isfinite(m), self._d(m - m0), zero)
        alpha = jnp.exp(shift)
        d = self._d(zm - m0[:, None])
        e = jnp.exp(d)
        e_d = jnp.where(e > 0, e * d, zero)  # 0 * -inf
        t = alpha * (t + shift * s) + jnp.sum(e_d, axis=-1)
        s = alpha * s + jnp.sum(e, axis=-1)
        return m_new, s, t, zy + blk.at_label(z, zero), arg

    def combine(self, acc, vocab: Vocab):
        m, s, t, zy, arg = acc
        arg = arg + jnp.asarray(vocab.offset, jnp.int32)
        if not vocab.sharded:
            return m, s, t, zy, arg
        big, big0 = vocab.max(m)
        # A shard with no class left has m = -inf and s = t = 0: no shift then.
        shift = jnp.where(jnp.isfinite(m), self._d(m - big0), 0)
        alpha = jnp.exp(shift)
        s2, t2 = vocab.psum(alpha * s), vocab.psum(alpha * (t + shift * s))
        first = jnp.where(m == big, arg, jnp.iinfo(jnp.int32).max)
        return big, s2, t2, vocab.psum(zy), vocab.pmin(first)

    def finish(self, acc):
        m, s, t, zy, arg = acc
        m0 = jnp.where(jnp.isfinite(m), m, 0)
        log_s = jnp.log(s)
        logprob = self._d(zy - m0) - log_s
        entropy = log_s - t / s
        out = (logprob, entropy, self._d(m0) + log_s, arg)
        return out, (m0, log_s, entropy)

    def cotangent(self, z: Array, blk: Block, saved, cts):
        """``du = a ([c = y] - p) - b p (log p + H) + l p``, ``dz = du / tau``,
        with cotangents ``a`` (logprob), ``b`` (entropy), ``l`` (lse)."""
        m0, log_s, entropy = saved
        a, b, ll, _ = (x[:, None] for x in cts)
        zero = jnp.zeros((), z.dtype)
        logp = self._d(z - m0[:, None]) - log_s[:, None]
        p = jnp.exp(logp)
        ent = jnp.where(p > 0, p * (logp + entropy[:, None]), zero)
        du = (ll - a) * p - b * ent + jnp.where(blk.is_label(), a, zero)
        return self._d(du), ()


def linear_token_stats(
    hidden: Float[ArrayLike, "_tokens _features"],
    weight: Float[ArrayLike, "_vocab _features"] | Float[ArrayLike, "_features _vocab"],
    labels: Int[ArrayLike, " _tokens"],
    *,
    bias: Float[ArrayLike, " _vocab"] | None = None,
    temperature: Number = 1.0,
    softcap: Number | None = None,
    where: Bool[ArrayLike, " _tokens"] | None = None,
    ignore_index: IndexLike | None = None,
    chunk_size: IndexLike | Literal["auto"] | None = None,
    memory_budget_bytes: int | None = None,
    weight_layout: WeightLayout = "vd",
    compact: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: AxisName = None,
    vocab_axis: AxisName = None,
) -> TokenStats:
    r"""Per-token log-probability, entropy, logsumexp and argmax of a linear layer.

    The statistics of policy-gradient fine-tuning (PPO, GRPO) without the
    ``(N, V)`` logits. Per token, with $x = h W^\top + b$,
    $z = c \tanh(x / c) / \tau$ (soft cap $c$ first, then the temperature
    $\tau$), $p = \operatorname{softmax}(z)$ and
    $\operatorname{lse} = \log \sum_c e^{z_c}$:

    $$\text{logprob}_n = z_{y_n} - \operatorname{lse}_n, \qquad
      H_n = \operatorname{lse}_n - \textstyle\sum_c p_c z_c, \qquad
      \text{argmax}_n = \operatorname{argmax}_c z_c.$$

    The vocabulary is streamed in blocks with online accumulators (see the
    docs' "How the fused heads work"). Gradients (a ``jax.custom_vjp``;
    ``argmax`` has none) recompute each block: with cotangents $\bar a$
    (logprob), $\bar b$ (entropy), $\bar l$ (logsumexp) and
    $E = \sum_c p_c z_c$, $\partial / \partial z_c = \bar a ([c = y] - p_c)
    - \bar b\, p_c (z_c - E) + \bar l\, p_c$ (then $1/\tau$ and the soft cap's
    $1 - \tanh^2$), four matmuls with the forward; so ``jax.grad`` of any
    objective of the statistics equals the unfused computation.

    Args:
        hidden: ``(N, D)`` activations (``N = 0``: empty statistics).
        weight: ``(V, D)`` (``weight_layout="vd"``) or ``(D, V)`` (``"dv"``),
            the dtype of ``hidden``.
        labels: ``(N,)`` integer tokens in ``[0, V)``. A present label outside
            it gives a NaN ``logprob`` (and NaN gradients through it); its
            entropy, logsumexp and argmax stay finite.
        bias: ``(V,)`` or None; ``-inf`` entries (banned tokens) are out of the
            softmax (with a ``softcap`` they become ``-c``).
        temperature: $\tau$, a finite number > 0 known at trace time.
        softcap: a finite $c > 0$ (Gemma 2), or None.
        where: ``(N,)`` boolean: False tokens (padding, prompt) are absent.
        ignore_index: tokens whose label equals it are absent too (PyTorch,
            TRL and Liger mark prompt tokens with ``-100``).
            Absent tokens have 0 ``logprob``, ``entropy`` and ``logsumexp``,
            ``argmax`` 0, and no gradient flows from them.
        chunk_size: the block plan, as in
            `jaxce.linear_softmax_cross_entropy`. Results do not depend on it.
        memory_budget_bytes: see ``chunk_size``.
        weight_layout: ``"vd"`` or ``"dv"`` (contracted in place).
        compact: skip the work of absent tokens, as in
            `jaxce.linear_softmax_cross_entropy`. Same results.
        mesh: vocabulary- / data-parallel, as in
            `jaxce.linear_softmax_cross_entropy` (the argmax ties still go to
            the first index).
        batch_axis: see ``mesh``.
        vocab_axis: see ``mesh``.

    Returns:
        `TokenStats` ``(logprob, entropy, logsumexp, argmax)``, each ``(N,)``:
        floats in the dtype of ``hidden`` (computed in float32 for bf16 /
        fp16), ``argmax`` int32. (Per-token statistics have no reduction, so
        no ``weights``: weight the objective built on them.)

    Examples:
        >>> import jax, jax.numpy as jnp, jaxce
        >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
        >>> w = jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 1.0], [2.0, 0.0]])
        >>> y = jnp.array([0, 3, 2])
        >>> s = jaxce.linear_token_stats(h, w, y, chunk_size=3)
        >>> print(s.logprob, s.entropy, s.argmax)
        [-1.44019 -0.40132 -0.91758] [0.94754 0.98777 1.17267] [3 3 0]
        >>> print(jax.nn.log_softmax(h @ w.T)[jnp.arange(3), y])
        [-1.44019 -0.40132 -0.91758]

        A PPO-style objective with an entropy bonus, differentiated, and a
        prompt token marked ``-100``:

        >>> adv = jnp.array([1.0, -0.5, 2.0])
        >>> def objective(w):
        ...     s = jaxce.linear_token_stats(h, w, y, temperature=0.7)
        ...     return jnp.sum(adv * s.logprob + 0.01 * s.entropy)
        >>> print(jax.grad(objective)(w)[0])
        [ 1.20514 -2.56065]
        >>> s2 = jaxce.linear_token_stats(h, w, jnp.array([-100, 3, 2]),
        ...                               ignore_index=-100)
        >>> print(s2.logprob)
        [ 0.      -0.40132 -0.91758]

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
                where=m, ignore_index=ignore_index, chunk_size=chunk_size,
                memory_budget_bytes=memory_budget_bytes, weight_layout=weight_layout,
                compact=compact,
            ),
            arrays,
            TokenStats(spec, spec, spec, spec),  # type: ignore[arg-type]
        )  # fmt: skip
    call = prepare_call(
        hidden, weight, labels, bias=bias, ignore_index=ignore_index, where=where,
        softcap=softcap, temperature=temperature, chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes, weight_layout=weight_layout,
        compact=compact,
    )  # fmt: skip
    lp, ent, lse, arg = stream(TokenStat(call.temperature), call, lay, call.head)
    dtype = call.head.hidden.dtype
    place = (lambda x: x) if lay is None else lay.rows
    # NaN outside the custom_vjp: the gradient that reaches an invalid token's
    # logprob is NaN too (its entropy / lse are unaffected).
    logprob = nan_where(place(call.invalid), lp.astype(dtype))
    return TokenStats(logprob, ent.astype(dtype), lse.astype(dtype), arg)
