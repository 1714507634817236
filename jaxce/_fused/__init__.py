"""The fused heads: linear layer + loss or statistics, never the ``(N, V)`` logits.

Each family is one module on the engine (``_engine``): ``_cross_entropy``
(with its kernels in ``_ce_kernels``), ``_token_stats`` and ``_distillation``.
"""

from ._cross_entropy import (
    linear_softmax_cross_entropy as linear_softmax_cross_entropy,
)
from ._distillation import linear_distillation_loss as linear_distillation_loss
from ._policy import linear_policy_loss as linear_policy_loss
from ._token_stats import (
    TokenStats as TokenStats,
    linear_token_stats as linear_token_stats,
)
