"""Fused linear -> softmax cross-entropy that never builds the ``(N, V)`` logits.

Layering, one way (each module imports only those before it):
``_weight_layout`` / ``_block_sizes`` <- ``_blocks`` (vocabulary-block kernels)
<- ``_mesh`` (mesh axes, padding) and ``_head`` / ``_prepare`` (argument
checks) <- ``_recompute`` (statistics with recompute-in-backward, per-token
loss) <- ``_token_grads`` <- ``_tokens`` (token-chunked gradients in the
forward) and ``_vocab_parallel`` (``shard_map``) <- ``_api`` (the public
function). Beside them, on the same blocks and mesh: ``_stat_blocks`` <-
``_stats_parallel`` <- ``_token_stats`` (per-token statistics) and
``_distill_chunks`` <- ``_distill`` (fused distillation).
"""

from ._api import linear_softmax_cross_entropy as linear_softmax_cross_entropy
from ._distill import linear_distillation_loss as linear_distillation_loss
from ._prepare import prepare as prepare
from ._token_grads import (
    Want as Want,
    coefficients as coefficients,
    token_chunk_grads as token_chunk_grads,
)
