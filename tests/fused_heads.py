"""The fused heads under test: one entry per fused linear -> loss function, for the
generic checks of ``test_fused_heads.py`` to loop over (as `losses.py` does for
the losses on explicit logits).

Each `Head` holds the public function, its unfused reference on explicit logits
(same arguments: the logits are formed, soft-capped and scaled, then the plain
loss or statistics of `jaxce` take the rest), the names of its arguments by role
(hidden, weight, labels, bias), the levels its options are swept at, and the
scalar the gradient checks differentiate. What a head takes is read from its
signature (`Head.options`), so an option added to a head is swept there as soon
as it is listed in `LEVELS` (and the reference knows it); `test_fused_heads`
fails for an option that is not.

The inputs are small (13 tokens, or 3 x 5 for the policy head; 4 and 6
features, 21 classes: ragged against the chunk of 8 classes swept) so that every
configuration is one quick compilation.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

import jaxce

N, D, DT, V = 13, 4, 6, 21
CHUNK = 8  # 21 = 2 * 8 + 5: the last vocabulary block is ragged
IGNORE = -100
# 4 tokens per row chunk of V classes: budget_elements = bytes / 16 in float32
BUDGET = 16 * 4 * V


def data(seed: int = 0) -> dict[str, jax.Array]:
    """Every array a head may take (float32), by name."""
    k = jax.random.split(jax.random.key(seed), 12)
    labels = jax.random.randint(k[3], (N,), 0, V)
    out = dict(
        hidden=jax.random.normal(k[0], (N, D)),
        weight=0.5 * jax.random.normal(k[1], (V, D)),
        bias=jax.random.normal(k[2], (V,)),
        labels=labels,
        ignored=labels.at[::4].set(IGNORE),  # tokens 0, 4, 8, 12 ignored
        where=jax.random.uniform(k[4], (N,)) > 0.3,
        weights=jax.random.uniform(k[5], (N,), minval=0.5, maxval=1.5),
        class_weights=jax.random.uniform(k[6], (V,)) + 0.5,
        teacher_hidden=jax.random.normal(k[7], (N, DT)),
        teacher_weight=0.5 * jax.random.normal(k[8], (V, DT)),
        teacher_bias=jax.random.normal(k[9], (V,)),
        coef=jax.random.normal(k[10], (3, N)),  # token statistics' objective
    )
    # distillation's names for the student's arrays
    out.update(
        student_hidden=out["hidden"], student_weight=out["weight"],
        student_bias=out["bias"],
    )  # fmt: skip
    return out


B, T = 3, 5  # the policy head's (batch, time): 15 tokens


def policy_data(seed: int = 0) -> dict[str, jax.Array]:
    """The policy head's arrays: ``(B, T, D)`` hidden states, ``(B, T)`` tokens, a
    completion mask, advantages; old / reference log-probs near the policy's own
    (so that some ratios are clipped) and importance ratios."""
    k = jax.random.split(jax.random.key(seed), 8)
    hidden = jax.random.normal(k[0], (B, T, D))
    weight = 0.5 * jax.random.normal(k[1], (V, D))
    tokens = jax.random.randint(k[2], (B, T), 0, V)
    logprob = jax.nn.log_softmax(hidden @ weight.T)
    logprob = jnp.take_along_axis(logprob, tokens[..., None], -1)[..., 0]
    return dict(
        hidden=hidden,
        weight=weight,
        bias=jax.random.normal(k[3], (V,)),
        tokens=tokens,
        advantages=jax.random.normal(k[4], (B,)),
        where=jnp.arange(T)[None, :] < jnp.array([T, 2, 4])[:, None],
        old_logprob=logprob + 0.3 * jax.random.normal(k[5], (B, T)),
        ref_logprob=logprob + 0.3 * jax.random.normal(k[6], (B, T)),
        is_ratio=jax.random.uniform(k[7], (B, T), minval=0.8, maxval=1.2),
        coef=jnp.zeros((3, N)),  # unused (the policy loss is a scalar)
    )


# -- option levels ------------------------------------------------------------------
#
# option -> its levels, the first the default. An array option is swept as
# False / True (absent / the array of `data` of the same name); `ignore_index`
# as None / -100 (with labels that hold -100).
LEVELS: dict[str, tuple] = {
    "bias": (False, True),
    "student_bias": (False, True),
    "teacher_bias": (False, True),
    "class_weights": (False, True),
    "where": (False, True),
    "weights": (False, True),
    "ignore_index": (None, IGNORE),
    "label_smoothing": (0.0, 0.1),
    "z_loss": (0.0, 1e-3),
    "softcap": (None, 2.5),
    "temperature": (1.0, 0.7),
    "kind": ("forward_kl", "reverse_kl", "jsd"),
    "base": (None, 2),
    "normalizer": (None, 7.5),
    "reduction": ("mean", "none", "sum", "sum_over_batch_size"),
    # "auto" picks a chunk size (here the whole vocabulary, as None does) and the
    # same kernels run: it is tested once per head in the heads' own files.
    "chunk_size": (None, CHUNK),
    "memory_budget_bytes": (None, BUDGET),
    "weight_layout": ("vd", "dv"),
    "compact": (False, True),
    # the policy head (its loss-specific knobs: tests/test_policy.py)
    "loss_type": ("dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo"),
    "importance_sampling_level": ("token", "sequence"),
    "old_logprob": (False, True),
    "ref_logprob": (False, True),
    "is_ratio": (False, True),
    "entropy_coef": (0.0, 0.01),
}
# Options whose levels differ by head: head name -> option -> levels.
HEAD_LEVELS: dict[str, dict[str, tuple]] = {
    "linear_distillation_loss": {"beta": (0.5, 0.2)},  # the JSD mixture
    "linear_policy_loss": {"beta": (0.0, 0.04)},  # the KL penalty
}
ARRAY_OPTIONS = {
    "bias", "student_bias", "teacher_bias", "class_weights", "where", "weights",
    "old_logprob", "ref_logprob", "is_ratio",
}  # fmt: skip
# Taken by the heads but not swept here: the mesh (tests/test_sharded.py,
# tests/test_llm_sharded.py, tests/test_fused_compact.py) and distillation's
# `labels`, which only carry `ignore_index` (swept with it).
NOT_SWEPT = {"mesh", "batch_axis", "vocab_axis", "labels"}


def allowed(row: Mapping[str, Any]) -> bool:
    """Options that go together: a `normalizer` divides a summed loss (and of the
    policy losses, those of "dapo", "cispo" and "vespo"); the KL penalty needs
    reference log-probs; "cispo", "sapo" and "vespo" weigh tokens, not
    sequences."""
    if row.get("normalizer") is not None:
        if row.get("reduction") == "none":
            return False
        if row.get("loss_type", "dapo") not in ("dapo", "cispo", "vespo"):
            return False
    if row.get("beta", 0.0) > 0 and row.get("ref_logprob") is False:
        return False
    token_only = row.get("loss_type") in ("cispo", "sapo", "vespo")
    return not (token_only and row.get("importance_sampling_level") == "sequence")


# -- references on explicit logits --------------------------------------------------


def _logits(hidden, weight, bias, layout, softcap=None, temperature=1.0):
    z = hidden @ (weight.T if layout == "vd" else weight)
    if bias is not None:
        z = z + bias[None, :]
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    return z / temperature


def ce_reference(
    hidden, weight, labels, *, bias=None, softcap=None, weight_layout="vd",
    chunk_size=None, memory_budget_bytes=None, compact=False, **kw,
):  # fmt: skip
    """`sparse_softmax_cross_entropy` of the (soft-capped) logits."""
    del chunk_size, memory_budget_bytes, compact  # the work, not the result
    z = _logits(hidden, weight, bias, weight_layout, softcap)
    return jaxce.sparse_softmax_cross_entropy(z, labels, **kw)


def stats_reference(
    hidden, weight, labels, *, bias=None, temperature=1.0, softcap=None, where=None,
    ignore_index=None, weight_layout="vd", chunk_size=None, memory_budget_bytes=None,
    compact=False,
):  # fmt: skip
    """Statistics from ``jax.nn.log_softmax`` of the full logits; absent tokens
    (``where`` False, label ``ignore_index``) give 0, an out-of-range present
    label a NaN logprob."""
    del chunk_size, memory_budget_bytes, compact
    z = _logits(hidden, weight, bias, weight_layout, softcap, temperature)
    v = z.shape[-1]
    logp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(logp)
    entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    lp = jnp.take_along_axis(logp, jnp.clip(labels, 0, v - 1)[:, None], 1)[:, 0]
    lp = jnp.where((labels < 0) | (labels >= v), jnp.nan, lp)
    lse = jax.nn.logsumexp(z, axis=-1)
    argmax = jnp.argmax(z, axis=-1).astype(jnp.int32)
    present = jnp.ones(labels.shape, bool) if where is None else where
    if ignore_index is not None:
        present = present & (labels != ignore_index)
    out = [jnp.where(present, x, 0.0) for x in (lp, entropy, lse)]
    return jaxce.TokenStats(*out, jnp.where(present, argmax, 0))


def distill_reference(
    student_hidden, student_weight, teacher_hidden, teacher_weight, *,
    student_bias=None, teacher_bias=None, labels=None, ignore_index=None, where=None,
    weight_layout="vd", chunk_size=None, memory_budget_bytes=None, compact=False,
    softcap=None, **kw,
):  # fmt: skip
    """`distillation_loss` of the two models' (soft-capped) logits;
    ``labels == ignore_index`` marks absent tokens."""
    del chunk_size, memory_budget_bytes, compact
    zs = _logits(student_hidden, student_weight, student_bias, weight_layout, softcap)
    zt = _logits(teacher_hidden, teacher_weight, teacher_bias, weight_layout, softcap)
    if labels is not None:
        keep = labels != ignore_index
        where = keep if where is None else where & keep
    return jaxce.distillation_loss(zs, zt, where=where, **kw)


def policy_reference(
    hidden, weight, tokens, advantages, *, where, temperature=1.0, bias=None,
    weight_layout="vd", chunk_size=None, memory_budget_bytes=None, compact=False,
    **kw,
):  # fmt: skip
    """`policy_loss` of the statistics of the full logits (its entropy too)."""
    del chunk_size, memory_budget_bytes, compact
    b, t, d = hidden.shape
    s = stats_reference(
        hidden.reshape(b * t, d), weight, tokens.reshape(b * t), bias=bias,
        temperature=temperature, weight_layout=weight_layout,
    )  # fmt: skip
    return jaxce.policy_loss(
        s.logprob.reshape(b, t), advantages, where=where,
        entropy=s.entropy.reshape(b, t), **kw,
    )  # fmt: skip


# -- the registry -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Head:
    """One fused head and what the generic tests need to know about it."""

    name: str
    fn: Callable[..., Any]
    reference: Callable[..., Any]  # the same arguments, on explicit logits
    closed_form: Callable[..., Any] | None  # its gradients (same arguments)
    weights: tuple[str, ...]  # the (V, D) weights: transposed for "dv"
    biases: tuple[str, ...]
    inputs: Callable[[int], dict[str, jax.Array]] = data  # seed -> arrays by name
    required: tuple[str, ...] = ()  # keyword arrays always passed
    fixed: tuple[tuple[str, Any], ...] = ()  # keywords always passed
    elsewhere: tuple[str, ...] = ()  # options tested in the head's own file only
    # float arrays that are data, not parameters (RL advantages, log-probs of
    # other models): `test_fused_heads.test_gradients_of_data` checks them apart
    constants: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name

    def _parameters(self, kind) -> tuple[str, ...]:
        sig = inspect.signature(inspect.unwrap(self.fn))
        return tuple(p.name for p in sig.parameters.values() if p.kind is kind)

    @property
    def positional(self) -> tuple[str, ...]:
        """Its positional arguments (names in `data`), from the signature."""
        return self._parameters(inspect.Parameter.POSITIONAL_OR_KEYWORD)

    @property
    def options(self) -> tuple[str, ...]:
        """Its keyword-only arguments, from the signature."""
        return self._parameters(inspect.Parameter.KEYWORD_ONLY)

    @property
    def hidden(self) -> str:
        return self.positional[0]

    @property
    def labels_keyword(self) -> bool:
        """Labels are an option (distillation), not a positional argument."""
        return "labels" in self.options

    @property
    def has_labels(self) -> bool:
        return "labels" in self.positional or self.labels_keyword

    def takes(self, option: str) -> bool:
        return option in self.options

    @property
    def swept(self) -> dict[str, tuple]:
        """option -> levels, for the options it takes that are swept."""
        levels = {**LEVELS, **HEAD_LEVELS.get(self.name, {})}
        skip = {*self.required, *self.elsewhere, *dict(self.fixed)}
        return {k: levels[k] for k in self.options if k in levels and k not in skip}

    def arguments(self, row: Mapping[str, Any], arrays: Mapping[str, jax.Array]):
        """``(arrays, static)`` of a call with the options of ``row`` (levels of
        `LEVELS`) on ``arrays`` (`data`): the array arguments by name (positional
        ones included), the other keywords."""
        arrays = dict(arrays)
        ignore = row.get("ignore_index") is not None
        if ignore:
            arrays["labels"] = arrays["ignored"]
        if row.get("weight_layout", "vd") == "dv":
            for name in self.weights:
                arrays[name] = arrays[name].T
        out = {name: arrays[name] for name in (*self.positional, *self.required)}
        static = dict(self.fixed)
        for option, level in row.items():
            if option not in ARRAY_OPTIONS:
                static[option] = level
            elif level:
                out[option] = arrays[option]
        if ignore and self.labels_keyword:
            out["labels"] = arrays["labels"]
        return out, static

    def call(self, fn, arrays: Mapping[str, jax.Array], **static):
        """``fn`` (`Head.fn`, `Head.reference`, `Head.closed_form`) on the array
        arguments by name (see `Head.arguments`) and keywords."""
        positional = [arrays[name] for name in self.positional]
        keyword = {k: v for k, v in arrays.items() if k not in self.positional}
        return fn(*positional, **keyword, **static)

    def scalar(self, out, coef: jax.Array) -> jax.Array:
        """The scalar the gradient checks differentiate: the loss, a weighted sum
        of per-token losses, or ``sum(a logprob + b entropy + c logsumexp)``."""
        if isinstance(out, tuple) and not isinstance(out, jaxce.TokenStats):
            return out[0]  # (loss, metrics)
        if isinstance(out, jaxce.TokenStats):
            a, b, c = coef
            return jnp.sum(a * out.logprob + b * out.entropy + c * out.logsumexp)
        if out.ndim:
            return jnp.sum(out * jnp.linspace(0.5, 1.5, out.shape[0]))
        return out


HEADS = [
    Head(
        name="linear_softmax_cross_entropy",
        fn=jaxce.linear_softmax_cross_entropy,
        reference=ce_reference,
        closed_form=jaxce.closed_form.linear_softmax_cross_entropy,
        weights=("weight",),
        biases=("bias",),
    ),
    Head(
        name="linear_token_stats",
        fn=jaxce.linear_token_stats,
        reference=stats_reference,
        closed_form=getattr(jaxce.closed_form, "linear_token_stats", None),
        weights=("weight",),
        biases=("bias",),
    ),
    Head(
        name="linear_distillation_loss",
        fn=jaxce.linear_distillation_loss,
        reference=distill_reference,
        closed_form=getattr(jaxce.closed_form, "linear_distillation_loss", None),
        weights=("student_weight", "teacher_weight"),
        biases=("student_bias", "teacher_bias"),
        constants=("teacher_hidden", "teacher_weight", "teacher_bias"),
    ),
]
HEADS.append(
    Head(
        name="linear_policy_loss",
        fn=jaxce.linear_policy_loss,
        reference=policy_reference,
        closed_form=None,
        weights=("weight",),
        biases=("bias",),
        inputs=policy_data,
        required=("where",),
        fixed=(("max_completion_length", T),),  # "dr_grpo" needs it
        constants=("advantages", "old_logprob", "ref_logprob", "is_ratio"),
        elsewhere=(
            "epsilon_low",
            "epsilon_high",
            "delta",
            "sapo_temperature_pos",
            "sapo_temperature_neg",
            "use_bias_correction_kl",
            "vespo_k_pos",
            "vespo_lambda_pos",
            "vespo_k_neg",
            "vespo_lambda_neg",
        ),  # tests/test_policy.py and tests/peers/test_policy_liger.py
    )
)
BY_NAME = {head.name: head for head in HEADS}
