"""The fused engine: what every fused head is built on, and never rewrites.

Layering, one way: ``_kernels`` (one logits block, its gradient matmuls, the
block loops) and ``_plan`` (the one block planner) <- ``_mesh`` (the mesh, its
collectives, padding, the one ``shard_map``) and ``_call`` (the checked
arguments of one call) <- ``_walk`` (a `Statistic` streamed over vocabulary
blocks) and ``_rows`` (a `RowLoss` on full-vocabulary rows) <- ``_vjp`` (the
``custom_vjp`` shapes and the entry points `stream` and `rows`).

A family (``.._cross_entropy``, ``.._token_stats``, ``.._distillation``) writes
its statistic or row loss and its public function; see ``docs/fused.md``.
"""

from ._call import (
    Call as Call,
    Head as Head,
    check_head as check_head,
    check_softcap as check_softcap,
    check_temperature as check_temperature,
    check_weight_layout as check_weight_layout,
    prepare_call as prepare_call,
)
from ._device import Tokens as Tokens
from ._kernels import class_axis as class_axis, num_classes as num_classes
from ._mesh import (
    AxisName as AxisName,
    Layout as Layout,
    Vocab as Vocab,
    layout_or_none as layout_or_none,
)
from ._plan import (
    BLOCK_ELEMENTS as BLOCK_ELEMENTS,
    Blocks as Blocks,
    block_sizes as block_sizes,
    budget_elements as budget_elements,
)
from ._rows import RowLoss as RowLoss
from ._vjp import rows as rows, stream as stream
from ._walk import Block as Block, Statistic as Statistic
