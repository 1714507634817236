"""Keras 3 loss classes computing jaxce's losses (JAX backend).

``import jaxce`` does not import Keras; ``import jaxce.keras`` does (set
``KERAS_BACKEND=jax`` first). Each class is a `keras.losses.Loss` registered
for serialisation under the package ``"jaxce"``, so a saved ``.keras`` model
reloads it. Its ``call`` returns jaxce's per-element losses; Keras applies
``sample_weight`` and the reduction.
"""

from ._binary import (
    BinaryCrossentropy as BinaryCrossentropy,
    BinaryFocalCrossentropy as BinaryFocalCrossentropy,
)
from ._categorical import (
    CategoricalCrossentropy as CategoricalCrossentropy,
    SparseCategoricalCrossentropy as SparseCategoricalCrossentropy,
    SparseCategoricalFocalCrossentropy as SparseCategoricalFocalCrossentropy,
)
