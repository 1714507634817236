"""The one block planner of the fused engine: every block from one element budget.

`block_sizes` derives every block of one call (vocabulary blocks, the
full-vocabulary row chunk) from `BLOCK_ELEMENTS` or a byte budget
(`budget_elements`); the constants are read at call time. A head that forms
``k`` logits blocks at once (distillation: student and teacher) plans with
``heads=k``: they share the budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp

from ..._core import check_positive_int

BLOCK_ELEMENTS = 1 << 24
"""The CPU's logits-block budget: 16 Mi elements (64 MiB in float32)."""
DEFAULT_CHUNK = 2048
"""Classes per vocabulary block when ``chunk_size`` is None (CPU)."""
ACCELERATOR_ELEMENTS = 1 << 27
"""A GPU's / TPU's logits-block budget: 128 Mi elements (512 MiB in float32;
2 GiB for the four live arrays). At an LLM head (V = 128256) a row chunk then
has 1024 tokens, so its weight-gradient GEMMs contract over 1024 rows and the
float32 ``dW`` accumulator is rewritten N / 1024 times, not N / 130."""
ACCELERATOR_CHUNK = 8192
"""Classes per vocabulary block on a GPU / TPU when ``chunk_size`` is None:
fewer vocabulary blocks, so fewer rewrites of the ``(N, D)`` ``d_hidden``."""
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
"""The platforms with a plan of their own (others get the CPU's)."""
MIN_TOKEN_BLOCK = 256
"""Fewest tokens per vocabulary block (keeps the matmul from degenerating)."""
MIN_AUTO_CHUNK = 128
"""Fewest classes per vocabulary block with ``chunk_size="auto"``."""
COMPACT_BLOCKS = 8
"""Token blocks per vocabulary pass with ``compact=True`` (its granularity)."""
LOGITS_ARRAYS = 4
"""Logits-block-sized arrays live at once (``z``, ``exp``, ``dz``, its cast)."""


def budget_elements(memory_budget_bytes: int | None, dtype) -> int | None:
    """The element budget of a byte budget: ``bytes // (4 * itemsize)``.

    ``itemsize`` is that of the compute dtype (4 for float32, also for bf16 /
    fp16 input); so 256 MiB (the default) gives `BLOCK_ELEMENTS`. None: None.
    """
    if memory_budget_bytes is None:
        return None
    per = LOGITS_ARRAYS * jnp.dtype(dtype).itemsize
    return max(1, memory_budget_bytes // per)


def check_chunk_size(chunk_size: object) -> int | Literal["auto"] | None:
    """``chunk_size`` checked: None, ``"auto"`` or an integer scalar >= 1."""
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise ValueError(
                f'`chunk_size` must be None, "auto" or an int >= 1, got {chunk_size!r}.'
            )
        return "auto"
    return check_positive_int(chunk_size, "chunk_size")


def check_budget(memory_budget_bytes: object, dtype) -> int | None:
    """The element budget of ``memory_budget_bytes`` (None or an int >= 1) for
    the compute dtype ``dtype`` (`budget_elements`)."""
    budget = check_positive_int(memory_budget_bytes, "memory_budget_bytes")
    return budget_elements(budget, dtype)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Block sizes of one call (see `block_sizes`)."""

    chunk_size: int  # classes per vocabulary block
    token_chunk: int  # tokens per vocabulary block (statistics, recompute)
    row_chunk: int  # tokens per full-vocabulary chunk (the row pass)


def token_chunk_for(n: int, v: int, budget: int | None = None) -> int:
    """Tokens per full-vocabulary chunk of the token path.

    At most ``budget // v`` tokens (default `BLOCK_ELEMENTS`), at least 1; the
    chunks are then evened out (``ceil(n / chunks)``) and rounded up to a
    multiple of 8 where that fits.
    """
    budget = BLOCK_ELEMENTS if budget is None else budget
    if n == 0:
        return 1
    t_max = max(1, min(n, budget // max(v, 1)))
    chunks = -(-n // t_max)
    t = -(-n // chunks)
    t8 = -(-t // 8) * 8
    return t8 if t8 <= min(t_max, n) else t


def block_sizes(
    n: int,
    v: int,
    chunk_size: int | str | None = None,
    budget: int | None = None,
    compact: bool = False,
    heads: int = 1,
    platform: str = "cpu",
) -> Blocks:
    """Every block size for ``n`` tokens and a vocabulary (slice) of ``v`` classes.

    All derive from one element budget ``B`` (default `BLOCK_ELEMENTS`, read at
    call time), so no logits block is larger than ``B`` elements:

    - vocabulary blocks (the statistics pass, the recompute backward and, under
      a mesh, each device's slice): ``chunk_size`` classes (default 2048,
      clipped to ``v``) by ``B // chunk_size`` tokens (at least 256, clipped to
      ``n``), i.e. ``chunk_size x (B // chunk_size)`` logits. These passes
      stream the vocabulary, so a block only needs to be large enough for an
      efficient matmul;
    - the token path (scalar reductions, differentiated) needs each token's
      *full-vocabulary* logits row (for the analytic ``dz``), so its block is
      ``(T, v)`` with ``T = token_chunk_for(n, v, B)``: the budget itself. A
      large ``T`` matters there, since every chunk adds into the whole ``dW``;
    - ``chunk_size="auto"``: square-ish vocabulary blocks, ``sqrt(B)`` classes
      rounded down to a multiple of 128 (at least 128, at most ``v``);
    - ``compact`` (present tokens packed to the front, the blocks after them
      skipped): a vocabulary block has at most ``ceil(n / 8)`` tokens (at least
      256), so that skipping has blocks to skip;
    - ``heads`` logits blocks formed at once share the budget: each gets
      ``B // heads``;
    - ``platform`` (the one the module is lowered for): ``"cpu"`` as above;
      ``"cuda"``, ``"rocm"`` and ``"tpu"`` default to ``B`` =
      `ACCELERATOR_ELEMENTS` and 8192-class vocabulary blocks. An explicit
      ``budget`` / ``chunk_size`` overrides the platform's.
    """
    accel = platform != "cpu"
    default = ACCELERATOR_ELEMENTS if accel else BLOCK_ELEMENTS
    budget = max(1, (default if budget is None else budget) // heads)
    if chunk_size == "auto":
        root = math.isqrt(budget) // MIN_AUTO_CHUNK * MIN_AUTO_CHUNK
        chunk_size = max(MIN_AUTO_CHUNK, root)
    default_chunk = ACCELERATOR_CHUNK if accel else DEFAULT_CHUNK
    c = max(1, min(default_chunk if chunk_size is None else int(chunk_size), v))
    t = max(1, min(n, max(MIN_TOKEN_BLOCK, budget // c)))
    if compact:
        t = min(t, max(MIN_TOKEN_BLOCK, -(-n // COMPACT_BLOCKS)))
    return Blocks(c, t, token_chunk_for(n, v, budget))
