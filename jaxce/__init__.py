"""jaxce: cross-entropy for JAX.

Every cross-entropy loss (binary, categorical, sparse, focal; from logits and
from probabilities), their closed-form gradients, a fused large-vocabulary loss,
and Equinox models trained through Optax.
"""

import importlib.metadata

from . import closed_form as closed_form, models as models
from ._compare import (
    GradientReport as GradientReport,
    compare_gradients as compare_gradients,
)
from ._fused import (
    TokenStats as TokenStats,
    linear_distillation_loss as linear_distillation_loss,
    linear_policy_loss as linear_policy_loss,
    linear_softmax_cross_entropy as linear_softmax_cross_entropy,
    linear_token_stats as linear_token_stats,
)
from ._losses._binary import (
    binary_cross_entropy as binary_cross_entropy,
    sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy,
)
from ._losses._distillation import distillation_loss as distillation_loss
from ._losses._focal import (
    sigmoid_focal_loss as sigmoid_focal_loss,
    softmax_focal_loss as softmax_focal_loss,
)
from ._losses._information import (
    cross_entropy as cross_entropy,
    entropy as entropy,
    kl_divergence as kl_divergence,
    perplexity as perplexity,
)
from ._losses._policy import (
    PolicyMetrics as PolicyMetrics,
    policy_loss as policy_loss,
)
from ._losses._probability import (
    categorical_cross_entropy as categorical_cross_entropy,
    sparse_categorical_cross_entropy as sparse_categorical_cross_entropy,
)
from ._losses._softmax import (
    softmax_cross_entropy as softmax_cross_entropy,
    sparse_softmax_cross_entropy as sparse_softmax_cross_entropy,
)
from ._training import (
    CheckpointError as CheckpointError,
    fit as fit,
    fit_ensemble as fit_ensemble,
    load as load,
    save as save,
)
from ._validate import validate as validate

__version__ = importlib.metadata.version("jaxce")
