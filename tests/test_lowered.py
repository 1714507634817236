"""The fused heads as an accelerator would run them, checked on this CPU.

Each head's ``value_and_grad`` is lowered for ``"cuda"`` and ``"tpu"`` (from
`jax.ShapeDtypeStruct` inputs: nothing of that size is computed) at an LLM head,
N = 32768, D = 4096, V = 128256, bf16, and the module is read: no ``(N, V)``
buffer, every GEMM takes bf16 operands with float32 accumulation, and the
blocks are the accelerator's plan (the CPU's plan is kept for ``"cpu"``).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import pytest

import jaxce
from jaxce._fused._engine._plan import block_sizes

N, D, V = 32768, 4096, 128256
S = jax.ShapeDtypeStruct
ARGS = (S((N, D), jnp.bfloat16), S((V, D), jnp.bfloat16), S((N,), jnp.int32))
DOT = re.compile(
    r"stablehlo\.dot_general.*?: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> "
    r"tensor<([^>]*)>"
)

HEADS = {
    "ce": lambda h, w, y: jaxce.linear_softmax_cross_entropy(h, w, y),
    "ce_none": lambda h, w, y: jnp.sum(
        jaxce.linear_softmax_cross_entropy(h, w, y, reduction="none")
    ),
    "token_stats": lambda h, w, y: jnp.sum(jaxce.linear_token_stats(h, w, y).logprob),
    "distillation": lambda h, w, y: jaxce.linear_distillation_loss(h, w, h, w),
}


@functools.cache
def module(head: str, platform: str) -> str:
    fn = jax.jit(jax.value_and_grad(HEADS[head], (0, 1)))
    return fn.trace(*ARGS).lower(lowering_platforms=(platform,)).as_text()


def logits_blocks(text: str) -> set[tuple[int, int]]:
    """The float32 logits-like ``(T, C)`` blocks of the module."""
    found = re.findall(r"tensor<(\d+)x(\d+)xf32>", text)
    return {(int(t), int(c)) for t, c in found if int(c) >= 2048 and int(c) != D}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_no_full_logits_and_bf16_gemms(head, platform):
    text = module(head, platform)
    assert f"{N}x{V}" not in text  # never the (N, V) logits
    dots = DOT.findall(text)
    assert len(dots) >= 3
    for a, b, out in dots:
        # bf16 operands, float32 accumulation: no SGEMM of a bf16 weight
        assert a.endswith("xbf16") and b.endswith("xbf16"), (a, b)
        assert out.endswith("xf32"), out


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerator_blocks(platform):
    # the cross-entropy token path: >= 1024 tokens per full-vocabulary chunk
    assert logits_blocks(module("ce", platform)) == {(1024, V)}
    # two heads share the budget: >= 512 tokens each
    (t, c), *_ = logits_blocks(module("distillation", platform))
    assert c == V and t >= 512
    # vocabulary blocks: 8192 classes, tokens from the same budget
    for head in ("ce_none", "token_stats"):
        assert logits_blocks(module(head, platform)) == {(16384, 8192)}


def test_cpu_keeps_its_plan():
    assert logits_blocks(module("ce", "cpu")) == {(130, V)}
    assert block_sizes(N, V).row_chunk == 130
    assert block_sizes(N, V, platform="cuda").row_chunk == 1024


def test_overrides_apply_on_every_platform():
    text = jax.jit(
        jax.grad(
            lambda h, w, y: jaxce.linear_softmax_cross_entropy(
                h, w, y, memory_budget_bytes=256 << 20
            ),
            (0, 1),
        )
    )
    cuda = text.trace(*ARGS).lower(lowering_platforms=("cuda",)).as_text()
    assert logits_blocks(cuda) == {(130, V)}  # the CPU's default budget


def test_exported_module_carries_the_accelerator_plan():
    fn = jax.jit(jax.grad(HEADS["ce"], (0, 1)))
    exported = jax.export.export(fn, platforms=("cuda",))(*ARGS)
    assert logits_blocks(exported.mlir_module()) == {(1024, V)}
