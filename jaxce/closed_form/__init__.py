"""Closed-form gradients of every jaxce loss, written out analytically.

``jaxce.closed_form.<loss>(...)`` takes the arguments of ``jaxce.<loss>`` and returns
the gradient of the reduced loss (for ``reduction="none"``: of its sum) with respect
to the first argument, without autodiff. `linear_model_grads` gives the parameter
gradients of the linear models. `jaxce.compare_gradients` holds them against
autodiff and finite differences.
"""

from ._binary import (
    binary_cross_entropy as binary_cross_entropy,
    sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy,
)
from ._focal import (
    sigmoid_focal_loss as sigmoid_focal_loss,
    softmax_focal_loss as softmax_focal_loss,
)
from ._fused import linear_softmax_cross_entropy as linear_softmax_cross_entropy
from ._linear import linear_model_grads as linear_model_grads
from ._probability import (
    categorical_cross_entropy as categorical_cross_entropy,
    sparse_categorical_cross_entropy as sparse_categorical_cross_entropy,
)
from ._softmax import (
    softmax_cross_entropy as softmax_cross_entropy,
    sparse_softmax_cross_entropy as sparse_softmax_cross_entropy,
)
from ._token_stats import token_stats_logits_grad as token_stats_logits_grad
