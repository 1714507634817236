"""Bad input: trace-time errors naming the argument, for every loss and its
closed form; out-of-range labels; hyperparameters given as arrays.

The test run wraps every jaxce function in a jaxtyping/beartype checker, which
rejects some bad input (wrong dtype, inconsistent shapes) before jaxce's own
checks run. Users do not have that checker, so jaxce's own messages are tested
on the unwrapped functions (`inspect.unwrap`), and the public, checked ones are
tested to raise a ValueError/TypeError naming the argument too.
"""

from __future__ import annotations

import functools
import inspect
import re

import helpers as h
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses import LOSSES, Loss, each, taking, where

import jaxce
from jaxce import closed_form

Z2 = np.zeros((3, 4), np.float32)  # logits / probs, 3 elements, 4 classes
P2 = np.full((3, 4), 0.25, np.float32)
Y1 = np.array([0, 1, 3], np.int32)
B1 = np.array([0.0, 1.0, 1.0], np.float32)
Z1 = np.zeros(3, np.float32)

F32 = np.float32
SOFT = jaxce.softmax_cross_entropy
SPARSE = jaxce.sparse_softmax_cross_entropy
CAT = jaxce.categorical_cross_entropy
SIGMOID = jaxce.sigmoid_binary_cross_entropy
BINARY = jaxce.binary_cross_entropy
SOFT_FOCAL = jaxce.softmax_focal_loss
SPARSE_CAT = jaxce.sparse_categorical_cross_entropy

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
# One option, every loss that takes it: (option, values, losses, exception,
# message template). The losses' example inputs (3 rows, 4 classes) carry them.
SWEEPS = [
    ("class_weights", (np.ones(3, F32), np.ones(5, F32)), taking("class_weights"),
     ValueError, r"`class_weights`.*\(4,\).*\({n},\)"),
    ("label_smoothing", (-0.1, 1.0, 1.5), taking("label_smoothing"), ValueError,
     r"`label_smoothing`.*\[0, 1\).*{v}"),
    ("reduction", ("avg",), LOSSES, ValueError, r"`reduction`.*'{v}'"),
    ("eps", (0.0, 0.5, -1e-3, 0.7), taking("eps"), ValueError,
     r"`eps`.*\(0, 0.5\).*{v}"),
    ("base", (0, 1, -2.0), LOSSES, ValueError, r"`base`.*{v}"),
    ("gamma", (-1.0,), taking("gamma"), ValueError, r"`gamma`.*{v}"),
    # softmax_focal_loss takes any non-negative alpha (a scalar or one per class)
    ("alpha", (-0.1, 1.5), [x for x in taking("alpha") if x.elementwise],
     ValueError, r"`alpha`.*\[0, 1\].*{v}"),
]
# fmt: on


def _param(case):
    name, *rest = case
    return pytest.param(*rest, id=name)


def _sweep(option, values, losses, exc, template):
    return [
        (f"{loss.name}-{option}{i}", loss.fn, loss.example()[:2], {option: v}, exc,
         template.format(v=v, n=np.shape(v)[0] if np.ndim(v) else 0))
        for loss in losses
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


# -- the closed forms reject what their losses reject -------------------------------

# (option, bad value): each for every loss that takes the option.
BAD_OPTIONS = [
    ("reduction", "avg"),  # ValueError (TypeError under the test type checker)
    ("class_weights", np.ones(5, F32)),
    ("label_smoothing", 1.5),
    ("base", 1),
    ("z_loss", -1.0),
]
CLOSED_FORM_BAD = [
    pytest.param(loss, {option: value}, id=f"{loss.name}-{option}")
    for option, value in BAD_OPTIONS
    for loss in taking(option)
]


@pytest.mark.parametrize("loss, kwargs", CLOSED_FORM_BAD)
def test_closed_form_bad_options_raise_like_the_loss(loss: Loss, kwargs):
    # Against the loss's own checks (unwrapped): a closed form takes the loss's
    # signature by construction and runs the same checks, but it is not wrapped
    # by the test-time type checker, which raises TypeError for some bad values.
    x, y, _ = loss.example()
    with pytest.raises((ValueError, TypeError)) as from_loss:
        inspect.unwrap(loss.fn)(x, y, **kwargs)
    with pytest.raises(type(from_loss.value), match=re.escape(str(from_loss.value))):
        loss.closed_form(x, y, **kwargs)


def test_closed_form_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="labels"):
        closed_form.sparse_softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2))
    # ValueError (TypeError from the test-time jaxtyping check) naming the argument.
    with pytest.raises((ValueError, TypeError), match="labels"):
        closed_form.sigmoid_binary_cross_entropy(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match="alpha"):
        closed_form.softmax_focal_loss(jnp.zeros((2, 3)), jnp.array([0, 1]),
                                       alpha=jnp.ones(4))  # fmt: skip
    with pytest.raises(ValueError, match="gamma"):
        closed_form.sigmoid_focal_loss(jnp.zeros(2), jnp.zeros(2), gamma=-1.0)
    with pytest.raises(ValueError, match="eps"):
        closed_form.binary_cross_entropy(jnp.zeros(2), jnp.zeros(2), eps=0.7)


# -- labels out of range, hyperparameters as arrays ---------------------------------

LOGITS = jnp.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
PROBS = jax.nn.softmax(LOGITS)


def _two_rows(loss: Loss):
    return LOGITS if loss.inputs == "logits" else PROBS


@pytest.mark.parametrize("bad", [-1, 3, -100])
@each(where(targets="labels"))
def test_out_of_range_label_is_nan_not_a_wrapped_class(loss: Loss, bad):
    x, labels = _two_rows(loss), jnp.array([0, bad])
    per_element = loss.fn(x, labels, reduction="none")
    assert np.isfinite(per_element[0]) and np.isnan(per_element[1])
    assert np.isnan(loss.fn(x, labels))
    grad = jax.grad(loss.fn)(x, labels, reduction="sum")
    closed_grad = loss.closed_form(x, labels, reduction="sum")
    for g in (grad, closed_grad):
        assert bool(jnp.all(jnp.isfinite(g[0]))) and bool(jnp.any(jnp.isnan(g[1])))
    h.assert_tree_allclose(grad[0], closed_grad[0])
    # the same label, declared absent, is simply left out
    kept = loss.fn(x, labels, ignore_index=bad)
    h.assert_tree_allclose(kept, loss.fn(x[:1], labels[:1]))


@each(taking("ignore_index"))
def test_ignore_index_accepts_numpy_integers(loss: Loss):
    # unwrapped: the test-time annotation checker only knows the documented `int`
    x, labels = _two_rows(loss), jnp.array([0, -100])
    got = inspect.unwrap(loss.fn)(x, labels, ignore_index=np.int64(-100))
    want = loss.fn(x, labels, ignore_index=-100)
    assert float(got) == float(want)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: jaxce.sparse_softmax_cross_entropy(
                LOGITS, jnp.array([0, 1]), label_smoothing=jnp.asarray(1.5)
            ),
            "label_smoothing",
        ),
        (
            lambda: jaxce.softmax_focal_loss(
                LOGITS, jnp.array([0, 1]), gamma=jnp.asarray(-1.0)
            ),
            "gamma",
        ),
        (
            lambda: jaxce.softmax_focal_loss(
                LOGITS, jnp.array([0, 1]), alpha=jnp.array([-1.0, 1.0, 1.0])
            ),
            "alpha",
        ),
        (
            lambda: jaxce.sigmoid_focal_loss(
                LOGITS, LOGITS * 0, alpha=jnp.asarray(3.0)
            ),
            "alpha",
        ),
        (
            lambda: jaxce.sparse_softmax_cross_entropy(
                LOGITS, jnp.array([0, 1]), z_loss=np.float32(-1.0)
            ),
            "z_loss",
        ),
    ],
)
def test_array_hyperparameters_are_range_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@each(where(targets="distributions"))
def test_dense_loss_given_integer_labels_names_targets(loss: Loss):
    # unwrapped: the test-time annotation checker would reject the shapes first
    with pytest.raises(ValueError, match=r"`targets`.*\(2, 3\).*\(2,\).*sparse"):
        inspect.unwrap(loss.fn)(PROBS, jnp.array([0, 2]))
