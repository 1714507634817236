"""Every python block of docs/optax.md runs and passes its own optax checks."""

from __future__ import annotations

import pathlib

import jax
import pytest

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "optax.md"
BLOCKS = PAGE.read_text().split("```python\n")[1:]


def test_the_page_has_blocks():
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index):
    code = BLOCKS[index].split("```", 1)[0]
    assert "optax" in code and "np.testing.assert_allclose" in code
    # As a user runs it: JAX's default promotion rules.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(code, f"{PAGE.name} block {index}", "exec"), {})
