"""`jaxce.validate`: runtime checks of values (NaN, ranges, labels), eagerly and
under `jax.jit` / `eqx.filter_jit`."""

from __future__ import annotations

import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

# Eagerly and under `eqx.filter_jit` a failed check raises EquinoxRuntimeError;
# under plain `jax.jit` the same message arrives in a JaxRuntimeError.
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
JITS = {"eager": lambda f: f, "jax.jit": jax.jit, "eqx.filter_jit": eqx.filter_jit}

VALIDATE_BAD = [
    pytest.param(np.array([[0.0, np.nan]], np.float32), None, {}, "NaN", id="nan"),
    pytest.param(
        np.array([[0.5, 1.5]], np.float32),
        None,
        {"kind": "probs"},
        r"outside \[0, 1\]",
        id="probs-range",
    ),
    pytest.param(
        np.array([[0.5, -0.1, 0.6]], np.float32),
        None,
        {"kind": "probs"},
        r"outside \[0, 1\]",
        id="probs-negative",
    ),
    pytest.param(
        np.array([[0.5, 0.2]], np.float32),
        None,
        {"kind": "probs"},
        "sum to 1",
        id="probs-rows",
    ),
    pytest.param(
        np.array([1.2], np.float32),
        None,
        {"kind": "binary_probs"},
        r"outside \[0, 1\]",
        id="binary-probs-range",
    ),
    pytest.param(
        np.zeros((2, 3), np.float32),
        np.array([0, 3], np.int32),
        {},
        r"out of range.*\[0, 3\)",
        id="label-too-big",
    ),
    pytest.param(
        np.zeros((2, 3), np.float32),
        np.array([-1, 0], np.int32),
        {},
        r"out of range",
        id="label-negative",
    ),
    pytest.param(
        np.zeros((2, 3), np.float32),
        np.array([-100, 5], np.int32),
        {"ignore_index": -100},
        r"out of range.*-100",
        id="label-ignore",
    ),
    pytest.param(
        np.zeros((3, 2), np.float32),
        np.array([0, 3], np.int32),
        {"axis": 0},
        r"out of range.*\[0, 3\)",
        id="label-axis0",
    ),
    pytest.param(
        np.zeros(2, np.float32),
        np.array([0.0, np.nan], np.float32),
        {"kind": "binary_logits"},
        "`labels` contain NaN",
        id="label-nan",
    ),
    pytest.param(
        np.zeros(2, np.float32),
        np.array([0.0, 1.1], np.float32),
        {"kind": "binary_logits"},
        r"`labels` outside \[0, 1\]",
        id="binary-label-range",
    ),
    pytest.param(
        np.zeros((1, 2), np.float32),
        np.array([[0.3, 0.3]], np.float32),
        {},
        "targets do not sum to 1",
        id="targets-rows",
    ),
]


@pytest.mark.parametrize("jit", list(JITS))
@pytest.mark.parametrize("inputs, labels, kwargs, match", VALIDATE_BAD)
def test_validate_rejects(inputs, labels, kwargs, match, jit):
    fn = JITS[jit](functools.partial(jaxce.validate, **kwargs))
    call_args = [jnp.asarray(a) for a in (inputs, labels) if a is not None]
    errors = RUNTIME_ERRORS if jit == "jax.jit" else eqx.EquinoxRuntimeError
    with pytest.raises(errors, match=match):
        jax.block_until_ready(fn(*call_args))


VALIDATE_GOOD = [
    (
        np.array([[0.2, 0.8], [0.5, 0.5]], np.float32),
        np.array([1, 0], np.int32),
        {"kind": "probs"},
    ),
    (
        np.zeros((2, 3), np.float32),
        np.array([2, -100], np.int32),
        {"ignore_index": -100},
    ),
    (np.zeros((3, 2), np.float32), np.array([0, 2], np.int32), {"axis": 0}),
    (
        np.array([0.0, 1.0], np.float32),
        np.array([0.0, 0.3], np.float32),
        {"kind": "binary_probs"},
    ),
    (
        np.array([1e4, -1e4], np.float32),
        np.array([1.0, 0.0], np.float32),
        {"kind": "binary_logits"},
    ),
    (np.zeros((1, 3), np.float32), np.array([[0.2, 0.3, 0.5]], np.float32), {}),
]


@pytest.mark.parametrize("jit", list(JITS))
@pytest.mark.parametrize("inputs, labels, kwargs", VALIDATE_GOOD)
def test_validate_passes_good_values_through(inputs, labels, kwargs, jit):
    fn = JITS[jit](functools.partial(jaxce.validate, **kwargs))
    x, y = fn(jnp.asarray(inputs), jnp.asarray(labels))
    np.testing.assert_array_equal(np.asarray(x), inputs)
    np.testing.assert_array_equal(np.asarray(y), labels)
    assert y.dtype == labels.dtype


@pytest.mark.parametrize("jit", ["jax.jit", "eqx.filter_jit"])
def test_validate_inside_a_jitted_loss(jit):
    def loss(logits, labels):
        logits, labels = jaxce.validate(logits, labels, ignore_index=-100)
        return jaxce.sparse_softmax_cross_entropy(logits, labels, ignore_index=-100)

    loss = JITS[jit](loss)
    # Under plain jax.jit XLA may wrap the callback's error in a ValueError.
    errors = eqx.EquinoxRuntimeError if jit == "eqx.filter_jit" else Exception
    z = jnp.zeros((3, 4))
    assert float(loss(z, jnp.array([0, -100, 3]))) == pytest.approx(np.log(4.0))
    with pytest.raises(errors, match="out of range"):
        jax.block_until_ready(loss(z, jnp.array([0, 4, 3])))
    with pytest.raises(errors, match="NaN"):
        jax.block_until_ready(loss(z.at[0, 0].set(jnp.nan), jnp.array([0, 1, 3])))


def test_validate_unknown_kind():
    with pytest.raises(ValueError, match=r"`kind`.*'softmax'"):
        inspect.unwrap(jaxce.validate)(jnp.zeros(3), kind="softmax")
