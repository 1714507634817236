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

LOGIT_SOFT = (jaxce.softmax_cross_entropy, (Z2, P2))
LOGIT_SPARSE = (jaxce.sparse_softmax_cross_entropy, (Z2, Y1))
PROB_SOFT = (jaxce.categorical_cross_entropy, (P2, P2))
PROB_SPARSE = (jaxce.sparse_categorical_cross_entropy, (P2, Y1))
SIGMOID = (jaxce.sigmoid_binary_cross_entropy, (Z1, B1))
BINARY = (jaxce.binary_cross_entropy, (np.full(3, 0.5, np.float32), B1))
SIG_FOCAL = (jaxce.sigmoid_focal_loss, (Z1, B1))
SOFT_FOCAL = (jaxce.softmax_focal_loss, (Z2, Y1))
ALL = [
    LOGIT_SOFT,
    LOGIT_SPARSE,
    PROB_SOFT,
    PROB_SPARSE,
    SIGMOID,
    BINARY,
    SIG_FOCAL,
    SOFT_FOCAL,
]
CATEGORICAL = [LOGIT_SOFT, LOGIT_SPARSE, PROB_SOFT, PROB_SPARSE]
SMOOTHING = [LOGIT_SOFT, LOGIT_SPARSE, PROB_SOFT, PROB_SPARSE, SIGMOID, BINARY]
PROBS = [PROB_SOFT, PROB_SPARSE, BINARY]


def _name(case):
    return case[0].__name__


def _cases(cases, *values):
    return [pytest.param(c, v, id=f"{_name(c)}-{v!r}") for c in cases for v in values]


# (function, positional args, keyword args, exception, regex the message matches)
BAD = [
    pytest.param(
        jaxce.sigmoid_binary_cross_entropy,
        (Z1, np.zeros(4, np.float32)),
        {},
        ValueError,
        r"`logits` and `labels`.*\(3,\) and \(4,\)",
        id="sigmoid-shapes",
    ),
    pytest.param(
        jaxce.binary_cross_entropy,
        (Z1, np.zeros((3, 1), np.float32)),
        {},
        ValueError,
        r"`probs` and `labels`.*\(3,\) and \(3, 1\)",
        id="binary-shapes",
    ),
    pytest.param(
        jaxce.softmax_cross_entropy,
        (Z2, np.zeros((3, 5), np.float32)),
        {},
        ValueError,
        r"`targets`.*\(3, 5\).*\(3, 4\)",
        id="softmax-shapes",
    ),
    pytest.param(
        jaxce.categorical_cross_entropy,
        (P2, np.zeros((2, 4), np.float32)),
        {},
        ValueError,
        r"`targets`.*\(2, 4\).*\(3, 4\)",
        id="categorical-shapes",
    ),
    pytest.param(
        jaxce.sparse_softmax_cross_entropy,
        (Z2, Y1[:2]),
        {},
        ValueError,
        r"`labels`.*\(3,\).*\(2,\)",
        id="sparse-shapes",
    ),
    pytest.param(
        jaxce.sparse_softmax_cross_entropy,
        (Z2, B1),
        {},
        TypeError,
        r"`labels`.*integer.*float32",
        id="sparse-float-labels",
    ),
    pytest.param(
        jaxce.sparse_categorical_cross_entropy,
        (P2, B1),
        {},
        TypeError,
        r"`labels`.*integer.*float32",
        id="sparse-prob-float-labels",
    ),
    pytest.param(
        jaxce.softmax_focal_loss,
        (Z2, B1),
        {},
        TypeError,
        r"`labels`.*integer.*float32",
        id="focal-float-labels",
    ),
    pytest.param(
        jaxce.sigmoid_binary_cross_entropy,
        (Z1, B1),
        {"weights": np.ones(5, np.float32)},
        ValueError,
        r"`weights` of shape \(5,\).*\(3,\)",
        id="weights-shape",
    ),
    pytest.param(
        jaxce.sparse_softmax_cross_entropy,
        (Z2, Y1),
        {"weights": np.ones((3, 4), np.float32)},
        ValueError,
        r"`weights` of shape \(3, 4\).*\(3,\)",
        id="sparse-weights-shape",
    ),
    pytest.param(
        jaxce.sigmoid_binary_cross_entropy,
        (Z1, B1),
        {"pos_weight": np.ones(2, np.float32)},
        ValueError,
        r"`pos_weight` of shape \(2,\).*\(3,\)",
        id="pos-weight-shape",
    ),
    pytest.param(
        jaxce.sigmoid_binary_cross_entropy,
        (Z1, B1),
        {"where": np.ones(2, bool)},
        ValueError,
        r"`where` of shape \(2,\).*\(3,\)",
        id="where-shape",
    ),
    pytest.param(
        jaxce.sparse_softmax_cross_entropy,
        (Z2, Y1),
        {"where": np.ones((2, 4), bool)},
        ValueError,
        r"`where` of shape \(2, 4\)",
        id="class-where-shape",
    ),
    pytest.param(
        jaxce.sigmoid_binary_cross_entropy,
        (Z1, B1),
        {"where": np.ones(3, np.float32)},
        TypeError,
        r"`where`.*boolean.*float32",
        id="where-dtype",
    ),
    pytest.param(
        jaxce.softmax_cross_entropy,
        (Z2, P2),
        {"axis": 2},
        ValueError,
        r"`axis`=2.*2 dimension",
        id="axis-range",
    ),
    pytest.param(
        jaxce.sparse_softmax_cross_entropy,
        (Z2, Y1),
        {"z_loss": -1.0},
        ValueError,
        r"`z_loss`.*-1.0",
        id="z-loss",
    ),
    pytest.param(
        jaxce.softmax_focal_loss,
        (Z2, Y1),
        {"alpha": np.ones(3, np.float32)},
        ValueError,
        r"`alpha`.*\(4,\).*\(3,\)",
        id="focal-alpha-shape",
    ),
    pytest.param(
        jaxce.softmax_focal_loss,
        (Z2, Y1),
        {"alpha": -0.5},
        ValueError,
        r"`alpha`.*-0.5",
        id="focal-alpha-negative",
    ),
    pytest.param(
        jaxce.sparse_softmax_cross_entropy,
        (Z2, Y1),
        {"ignore_index": 1.5},
        TypeError,
        r"(?s)ignore_index.*1\.5",
        id="ignore-index-float",
    ),
    pytest.param(
        jaxce.cross_entropy,
        (P2, P2[:, :3]),
        {},
        ValueError,
        r"`p` and `q`.*\(3, 4\) and \(3, 3\)",
        id="cross-entropy-shapes",
    ),
    pytest.param(
        jaxce.kl_divergence,
        (P2, P2[:2]),
        {},
        ValueError,
        r"`p` and `q`",
        id="kl-shapes",
    ),
    pytest.param(
        jaxce.sigmoid_binary_cross_entropy,
        (Z1.astype(np.complex64), B1),
        {},
        TypeError,
        r"`logits`.*complex64",
        id="complex-logits",
    ),
]
# Under jit: the hand-written cases and the first of each generated group.
BAD_JIT = list(BAD)
_group1 = [
    pytest.param(
        f,
        args,
        {"class_weights": np.ones(k, np.float32)},
        ValueError,
        rf"`class_weights`.*\(4,\).*\({k},\)",
        id=f"{f.__name__}-cw{k}",
    )
    for f, args in CATEGORICAL
    for k in (3, 5)
]
_group2 = [
    pytest.param(
        f,
        args,
        {"label_smoothing": v},
        ValueError,
        rf"`label_smoothing`.*\[0, 1\).*{v}",
        id=f"{f.__name__}-ls{v}",
    )
    for f, args in SMOOTHING
    for v in (-0.1, 1.0, 1.5)
]
_group3 = [
    pytest.param(
        f,
        args,
        {"reduction": "avg"},
        ValueError,
        r"`reduction`.*'avg'",
        id=f"{f.__name__}-reduction",
    )
    for f, args in ALL
]
_group4 = [
    pytest.param(
        f,
        args,
        {"eps": v},
        ValueError,
        rf"`eps`.*\(0, 0.5\).*{v}",
        id=f"{f.__name__}-eps{v}",
    )
    for f, args in PROBS
    for v in (0.0, 0.5, -1e-3, 0.7)
]
_group5 = [
    pytest.param(
        f, args, {"base": v}, ValueError, rf"`base`.*{v}", id=f"{f.__name__}-base{v}"
    )
    for f, args in ALL
    for v in (0, 1, -2.0)
]
_group6 = [
    pytest.param(
        jaxce.entropy, (P2,), {"base": 1}, ValueError, r"`base`.*1", id="entropy-base"
    ),
]
_group7 = [
    pytest.param(
        f, args, {"gamma": -1.0}, ValueError, r"`gamma`.*-1.0", id=f"{f.__name__}-gamma"
    )
    for f, args in (SIG_FOCAL, SOFT_FOCAL)
]
_group8 = [
    pytest.param(
        jaxce.sigmoid_focal_loss,
        (Z1, B1),
        {"alpha": v},
        ValueError,
        rf"`alpha`.*\[0, 1\].*{v}",
        id=f"sigmoid-focal-alpha{v}",
    )
    for v in (-0.1, 1.5)
]

GROUPS = [_group1, _group2, _group3, _group4, _group5, _group6, _group7, _group8]
BAD += [case for group in GROUPS for case in group]
BAD_JIT += [group[0] for group in GROUPS]


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
