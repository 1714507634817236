"""Bad input: trace-time errors naming the argument, and `jaxce.validate`.

The test run wraps every jaxce function in a jaxtyping/beartype checker, which
rejects some bad input (wrong dtype, inconsistent shapes) before jaxce's own
checks run. Users do not have that checker, so jaxce's own messages are tested
on the unwrapped functions (`inspect.unwrap`), and the public, checked ones are
tested to raise a ValueError/TypeError naming the argument too.
"""

from __future__ import annotations

import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

Z2 = np.zeros((3, 4), np.float32)  # logits / probs, 3 elements, 4 classes
P2 = np.full((3, 4), 0.25, np.float32)
Y1 = np.array([0, 1, 3], np.int32)
B1 = np.array([0.0, 1.0, 1.0], np.float32)
Z1 = np.zeros(3, np.float32)

F32 = np.float32
SOFT = jaxce.softmax_cross_entropy
SPARSE = jaxce.sparse_softmax_cross_entropy
CAT = jaxce.categorical_cross_entropy
SPARSE_CAT = jaxce.sparse_categorical_cross_entropy
SIGMOID = jaxce.sigmoid_binary_cross_entropy
BINARY = jaxce.binary_cross_entropy
SIG_FOCAL = jaxce.sigmoid_focal_loss
SOFT_FOCAL = jaxce.softmax_focal_loss
ARGS = {
    SOFT: (Z2, P2),
    SPARSE: (Z2, Y1),
    CAT: (P2, P2),
    SPARSE_CAT: (P2, Y1),
    SIGMOID: (Z1, B1),
    BINARY: (np.full(3, 0.5, F32), B1),
    SIG_FOCAL: (Z1, B1),
    SOFT_FOCAL: (Z2, Y1),
}

# fmt: off
# (id, function, positional args, keyword args, exception, regex of the message)
HAND_WRITTEN = [
    ("sigmoid-shapes", SIGMOID, (Z1, np.zeros(4, F32)), {}, ValueError,
     r"`logits` and `labels`.*\(3,\) and \(4,\)"),
    ("binary-shapes", BINARY, (Z1, np.zeros((3, 1), F32)), {}, ValueError,
     r"`probs` and `labels`.*\(3,\) and \(3, 1\)"),
    ("softmax-shapes", SOFT, (Z2, np.zeros((3, 5), F32)), {}, ValueError,
     r"`targets`.*\(3, 5\).*\(3, 4\)"),
    ("categorical-shapes", CAT, (P2, np.zeros((2, 4), F32)), {}, ValueError,
     r"`targets`.*\(2, 4\).*\(3, 4\)"),
    ("sparse-shapes", SPARSE, (Z2, Y1[:2]), {}, ValueError,
     r"`labels`.*\(3,\).*\(2,\)"),
    ("sparse-float-labels", SPARSE, (Z2, B1), {}, TypeError,
     r"`labels`.*integer.*float32"),
    ("sparse-prob-float-labels", SPARSE_CAT, (P2, B1), {}, TypeError,
     r"`labels`.*integer.*float32"),
    ("focal-float-labels", SOFT_FOCAL, (Z2, B1), {}, TypeError,
     r"`labels`.*integer.*float32"),
    ("weights-shape", SIGMOID, (Z1, B1), {"weights": np.ones(5, F32)}, ValueError,
     r"`weights` of shape \(5,\).*\(3,\)"),
    ("sparse-weights-shape", SPARSE, (Z2, Y1), {"weights": np.ones((3, 4), F32)},
     ValueError, r"`weights` of shape \(3, 4\).*\(3,\)"),
    ("pos-weight-shape", SIGMOID, (Z1, B1), {"pos_weight": np.ones(2, F32)},
     ValueError, r"`pos_weight` of shape \(2,\).*\(3,\)"),
    ("where-shape", SIGMOID, (Z1, B1), {"where": np.ones(2, bool)}, ValueError,
     r"`where` of shape \(2,\).*\(3,\)"),
    ("class-where-shape", SPARSE, (Z2, Y1), {"where": np.ones((2, 4), bool)},
     ValueError, r"`where` of shape \(2, 4\)"),
    ("where-dtype", SIGMOID, (Z1, B1), {"where": np.ones(3, F32)}, TypeError,
     r"`where`.*boolean.*float32"),
    ("axis-range", SOFT, (Z2, P2), {"axis": 2}, ValueError, r"`axis`=2.*2 dimension"),
    ("z-loss", SPARSE, (Z2, Y1), {"z_loss": -1.0}, ValueError, r"`z_loss`.*-1.0"),
    ("focal-alpha-shape", SOFT_FOCAL, (Z2, Y1), {"alpha": np.ones(3, F32)},
     ValueError, r"`alpha`.*\(4,\).*\(3,\)"),
    ("focal-alpha-negative", SOFT_FOCAL, (Z2, Y1), {"alpha": -0.5}, ValueError,
     r"`alpha`.*-0.5"),
    ("ignore-index-float", SPARSE, (Z2, Y1), {"ignore_index": 1.5}, TypeError,
     r"(?s)ignore_index.*1\.5"),
    ("cross-entropy-shapes", jaxce.cross_entropy, (P2, P2[:, :3]), {}, ValueError,
     r"`p` and `q`.*\(3, 4\) and \(3, 3\)"),
    ("kl-shapes", jaxce.kl_divergence, (P2, P2[:2]), {}, ValueError, r"`p` and `q`"),
    ("complex-logits", SIGMOID, (Z1.astype(np.complex64), B1), {}, TypeError,
     r"`logits`.*complex64"),
    ("entropy-base", jaxce.entropy, (P2,), {"base": 1}, ValueError, r"`base`.*1"),
]
# One option, many losses: (option, values, losses, exception, message template)
SWEEPS = [
    ("class_weights", (np.ones(3, F32), np.ones(5, F32)),
     (SOFT, SPARSE, CAT, SPARSE_CAT), ValueError, r"`class_weights`.*\(4,\).*\({n},\)"),
    ("label_smoothing", (-0.1, 1.0, 1.5),
     (SOFT, SPARSE, CAT, SPARSE_CAT, SIGMOID, BINARY), ValueError,
     r"`label_smoothing`.*\[0, 1\).*{v}"),
    ("reduction", ("avg",), tuple(ARGS), ValueError, r"`reduction`.*'{v}'"),
    ("eps", (0.0, 0.5, -1e-3, 0.7), (CAT, SPARSE_CAT, BINARY), ValueError,
     r"`eps`.*\(0, 0.5\).*{v}"),
    ("base", (0, 1, -2.0), tuple(ARGS), ValueError, r"`base`.*{v}"),
    ("gamma", (-1.0,), (SIG_FOCAL, SOFT_FOCAL), ValueError, r"`gamma`.*{v}"),
    ("alpha", (-0.1, 1.5), (SIG_FOCAL,), ValueError, r"`alpha`.*\[0, 1\].*{v}"),
]
# fmt: on


def _param(case):
    name, *rest = case
    return pytest.param(*rest, id=name)


def _sweep(option, values, fns, exc, template):
    return [
        (f"{f.__name__}-{option}{i}", f, ARGS[f], {option: v}, exc,
         template.format(v=v, n=np.shape(v)[0] if np.ndim(v) else 0))
        for f in fns
        for i, v in enumerate(values)
    ]  # fmt: skip


SWEPT = [_sweep(*sweep) for sweep in SWEEPS]
BAD = [_param(c) for c in HAND_WRITTEN + [case for s in SWEPT for case in s]]
# Under jit: the hand-written cases and the first of each sweep.
BAD_JIT = [_param(c) for c in HAND_WRITTEN + [s[0] for s in SWEPT]]


@pytest.mark.parametrize("fn, args, kwargs, exc, match", BAD)
def test_trace_time_error_message(fn, args, kwargs, exc, match):
    raw = inspect.unwrap(fn)  # jaxce's own checks, without the test type checker
    with pytest.raises(exc, match=match):
        raw(*args, **kwargs)


@pytest.mark.parametrize("fn, args, kwargs, exc, match", BAD_JIT)
def test_trace_time_error_under_jit(fn, args, kwargs, exc, match):
    raw = inspect.unwrap(fn)
    jitted = jax.jit(functools.partial(raw, **kwargs))
    with pytest.raises(exc, match=match):
        jitted(*[jnp.asarray(a) for a in args])


@pytest.mark.parametrize("fn, args, kwargs, exc, match", BAD)
def test_public_function_rejects(fn, args, kwargs, exc, match):
    # With the runtime type checker some cases fail its check first: either way
    # a ValueError/TypeError naming the argument.
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    names = set(match.split("`")[1::2]) | {k for k in kwargs}
    assert any(n in str(info.value) for n in names), str(info.value)


def test_traced_hyperparameters_are_accepted():
    # Range checks apply to Python numbers; traced values are the caller's job.
    f = jax.jit(
        lambda ls, g: (
            jaxce.sparse_softmax_cross_entropy(Z2, Y1, label_smoothing=ls)
            + jaxce.softmax_focal_loss(Z2, Y1, gamma=g)
        )
    )
    assert np.isfinite(float(f(jnp.float32(0.1), jnp.float32(2.0))))


# ----------------------------------------------------------------- validate

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
