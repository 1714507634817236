"""Repository-wide pytest settings, for tests/ and the doctests in jaxce/."""

import os

# Keras must use the JAX backend (TensorFlow is not installed); set it before
# anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402

# Doctest output: fixed 5 decimals, so arrays print without alignment padding.
np.set_printoptions(precision=5, floatmode="fixed", suppress=True)
