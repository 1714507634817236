"""The only code in jaxce that reads the shared options of a loss.

Layering: ``_checks`` (trace-time checks) <- ``_math`` (safe elementwise math)
<- ``_focal_factor`` (the focal term, exact in the label) <- ``_reduction``
(the one reduction) <- ``_categorical`` / ``_elementwise`` (the preparation of
one call). Loss families, closed forms and the fused loss import from here;
nothing here imports them.
"""

from ._categorical import (
    Categorical as Categorical,
    prepare_categorical as prepare_categorical,
)
from ._checks import (
    IndexLike as IndexLike,
    Number as Number,
    Reduction as Reduction,
    ScalarLike as ScalarLike,
    as_float_input as as_float_input,
    broadcast_to_elements as broadcast_to_elements,
    check_class_weights as check_class_weights,
    check_ignore_index as check_ignore_index,
    check_integer_labels as check_integer_labels,
    check_label_smoothing as check_label_smoothing,
    check_nonneg as check_nonneg,
    check_normalizer as check_normalizer,
    check_positive_int as check_positive_int,
    check_range as check_range,
    check_reduction as check_reduction,
    check_same_shape as check_same_shape,
    compute_dtype as compute_dtype,
    element_mask as element_mask,
    is_concrete_number as is_concrete_number,
    is_static_zero as is_static_zero,
    normalize_axis as normalize_axis,
)
from ._elementwise import (
    Elementwise as Elementwise,
    prepare_elementwise as prepare_elementwise,
)
from ._focal_factor import (
    focal_factor as focal_factor,
    log_one_minus_pt as log_one_minus_pt,
)
from ._math import (
    clip_bounds as clip_bounds,
    clip_derivative as clip_derivative,
    log_base_factor as log_base_factor,
    log_sigmoid_pair as log_sigmoid_pair,
    nan_where as nan_where,
    out_of_range as out_of_range,
    power_from_log as power_from_log,
    resolve_eps as resolve_eps,
    safe_divide as safe_divide,
    safe_log as safe_log,
    safe_power as safe_power,
    safe_xlogy as safe_xlogy,
    shifted_log_softmax as shifted_log_softmax,
    softmax_and_lse as softmax_and_lse,
    xlogy as xlogy,
)
from ._reduction import Reducer as Reducer, make_reducer as make_reducer
from ._sharding import (
    batch_spec as batch_spec,
    explicitly_sharded as explicitly_sharded,
    run_auto as run_auto,
)
