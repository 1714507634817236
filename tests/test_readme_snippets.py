"""The README's code blocks that must run as a user pastes them, in a fresh Python.

One fresh interpreter runs them all, each in its own namespace, in the README's
order ("Sharding" first: it sets the CPU device count, which must happen before
JAX starts), without the test session's settings (strict dtype promotion, the
8 devices of the root conftest, ``XLA_FLAGS``): one interpreter start and one
import of JAX instead of one per block. Each block's output is checked here
against the numbers computed in this process. A block that raises is reported
by name with its traceback; the others still run.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import jax

import jaxce

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = ["Sharding", "LLM training"]  # headings (their start); the first block

_DRIVER = """
import sys, traceback
blocks = {blocks!r}
for name, code in blocks:
    print(f"=== BEGIN {{name}}", flush=True)
    try:
        exec(compile(code, f"README.md ({{name}})", "exec"), {{"__name__": "__main__"}})
    except BaseException:
        print(f"=== FAILED {{name}}", flush=True)
        traceback.print_exc(file=sys.stdout)
    print(f"=== END {{name}}", flush=True)
"""


def block(heading: str) -> str:
    """The first python block of the section whose heading starts ``heading``."""
    section = README.read_text().split(f"\n## {heading}", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@functools.cache
def outputs() -> dict[str, str]:
    """heading -> what its block printed, all run in one fresh interpreter."""
    driver = _DRIVER.format(blocks=[(name, block(name)) for name in BLOCKS])
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    out = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, env=env,
        timeout=600, check=True,
    ).stdout  # fmt: skip
    found = {}
    for name in BLOCKS:
        text = out.split(f"=== BEGIN {name}\n", 1)[1].split(f"=== END {name}\n", 1)[0]
        assert f"=== FAILED {name}" not in text, f"README block {name!r}:\n{text}"
        found[name] = text
    return found


def test_readme_blocks_run_as_pasted():
    """Both blocks in one test: pytest-xdist could send two tests to two workers,
    each starting its own interpreter."""
    out = outputs()
    # "Sharding": the single-device losses and shardings like the inputs.
    sharding = out["Sharding"]
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    logits = jax.random.normal(k1, (64, 1000))
    labels = jax.random.randint(k2, (64,), 0, 1000)
    plain = jaxce.sparse_softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    hidden = jax.random.normal(k3, (61, 128))
    weight = jax.random.normal(k4, (4099, 128)) / 16
    tokens = jax.random.randint(k2, (61,), 0, 4099)
    fused = jax.jit(jaxce.linear_softmax_cross_entropy)(hidden, weight, tokens)
    assert f"loss {float(plain):.4f}, gradient split like the logits: " in sharding
    assert "P('data', 'vocab')" in sharding
    assert f"fused loss {float(fused):.4f}, d_weight (4099, 128)" in sharding
    # "LLM training": runs; gradient accumulation is exact.
    llm = out["LLM training"]
    gap = float(llm.rsplit("accumulated vs full gradient:", 1)[1])
    assert gap < 1e-6, llm
    assert "objective" in llm and "JSD" in llm
