"""Repository-wide pytest settings, for tests/ and the doctests in jaxce/."""

import os

# Keras must use the JAX backend (TensorFlow is not installed); set it before
# anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# 8 host CPU devices for the sharded tests (tests/test_sharded.py), in this
# process. JAX fixes the count when it starts its CPU backend, so it is set here,
# before any test module runs a JAX operation. Single-device code is unaffected:
# arrays are still committed to device 0 (JAX_NUM_CPU_DEVICES overrides this).
if "JAX_NUM_CPU_DEVICES" not in os.environ:
    jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

# Doctest output: fixed 5 decimals, so arrays print without alignment padding.
np.set_printoptions(precision=5, floatmode="fixed", suppress=True)
