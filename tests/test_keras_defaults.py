"""jaxce.keras takes Keras' arguments: the same names, order and defaults as the
Keras class it replaces (``from_logits=False``), so that swapping the import
keeps the number; probabilities work for every class, the focal ones included;
bad arguments raise, naming them."""

from __future__ import annotations

import inspect
import subprocess
import sys

import helpers as h
import jax
import keras
import numpy as np
import pytest

import jaxce.keras as jk

N, K = 6, 4
TOL = dict(rtol=1e-6, atol=1e-6)

# jaxce class -> the Keras class whose arguments it takes
PAIRS = [
    (jk.SparseCategoricalCrossentropy, keras.losses.SparseCategoricalCrossentropy),
    (jk.CategoricalCrossentropy, keras.losses.CategoricalCrossentropy),
    (jk.BinaryCrossentropy, keras.losses.BinaryCrossentropy),
    (jk.BinaryFocalCrossentropy, keras.losses.BinaryFocalCrossentropy),
]
# integer labels for Keras' one-hot focal loss: its arguments but label_smoothing
# (jaxce's softmax focal loss has none), and ignore_class as the sparse loss has
FOCAL = (
    jk.SparseCategoricalFocalCrossentropy,
    keras.losses.CategoricalFocalCrossentropy,
)


def keras_value(cls, y_true, y_pred, **kwargs) -> np.ndarray:
    """A Keras built-in loss under JAX's default promotion rules (Keras relies on
    them; conftest makes them errors)."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        return np.asarray(cls(**kwargs)(y_true, y_pred))


def _params(cls) -> list[inspect.Parameter]:
    return list(inspect.signature(cls).parameters.values())


@pytest.mark.parametrize("ours, theirs", [*PAIRS, FOCAL], ids=lambda c: c.__name__)
def test_keras_arguments_names_order_and_defaults(ours, theirs):
    """Keras' parameters come first, positional as in Keras, with Keras' defaults;
    jaxce's extra options follow, keyword-only."""
    keras_params = _params(theirs)
    if theirs is keras.losses.CategoricalFocalCrossentropy:
        keras_params = [p for p in keras_params if p.name != "label_smoothing"]
    ours_params = _params(ours)
    positional = [p for p in ours_params if p.kind != p.KEYWORD_ONLY]
    keyword = [p for p in ours_params if p.kind == p.KEYWORD_ONLY]
    extra = {"ignore_class"} if ours is jk.SparseCategoricalFocalCrossentropy else set()
    names = [p.name for p in positional if p.name not in extra]
    assert names == [p.name for p in keras_params]
    for p in keras_params:
        ours_default = inspect.signature(ours).parameters[p.name].default
        if p.name == "name":
            continue  # each class names itself
        assert ours_default == p.default, p.name
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in positional)
    for p in keyword:  # jaxce's options default to "off"
        assert p.default in (None, 0.0), p.name


def _probabilities(r, shape):
    return h.uniform(r, shape, 0.02, 0.98)


def test_default_classes_equal_keras_on_probabilities():
    """A model ending in a softmax / sigmoid, its loss swapped from keras.losses to
    jaxce.keras with the default arguments: the same loss."""
    r = h.rng(20)
    probs = h.probs(r, N, K)
    labels = h.labels(r, (N,), K)
    got = jk.SparseCategoricalCrossentropy()(labels, probs)
    want = keras_value(keras.losses.SparseCategoricalCrossentropy, labels, probs)
    h.assert_tree_allclose(np.asarray(got), want, **TOL)
    onehot = h.one_hot(labels, K)
    got = jk.CategoricalCrossentropy()(onehot, probs)
    want = keras_value(keras.losses.CategoricalCrossentropy, onehot, probs)
    h.assert_tree_allclose(np.asarray(got), want, **TOL)
    p, y = _probabilities(r, (N, 3)), h.binary_labels(r, (N, 3))
    for ours, theirs in PAIRS[2:]:
        h.assert_tree_allclose(
            np.asarray(ours()(y, p)), keras_value(theirs, y, p), **TOL
        )
    got = jk.SparseCategoricalFocalCrossentropy()(labels, probs)
    want = keras_value(keras.losses.CategoricalFocalCrossentropy, onehot, probs)
    h.assert_tree_allclose(np.asarray(got), want, **TOL)


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("gamma", [0.0, 1.5])
def test_binary_focal_from_probabilities_equals_keras(balanced, smoothing, gamma):
    r = h.rng(21)
    p, y = _probabilities(r, (N, 3)), h.binary_labels(r, (N, 3))
    y[0, 0] = 0.3  # a soft label
    kw = dict(
        apply_class_balancing=balanced,
        alpha=0.4,
        gamma=gamma,
        label_smoothing=smoothing,
        reduction=None,
    )
    got = np.asarray(jk.BinaryFocalCrossentropy(**kw)(y, p))
    want = keras_value(keras.losses.BinaryFocalCrossentropy, y, p, **kw)
    h.assert_tree_allclose(got, want, **TOL)
    logits = np.log(p) - np.log1p(-p)
    from_logits = jk.BinaryFocalCrossentropy(from_logits=True, **kw)(y, logits)
    h.assert_tree_allclose(np.asarray(from_logits), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.25, (0.1, 0.5, 1.0, 2.0)])
def test_sparse_focal_from_probabilities_equals_keras(alpha):
    r = h.rng(22)
    probs = h.probs(r, N, K) * 1.1  # rows summing to 1.1: Keras renormalises
    labels = h.labels(r, (N,), K)
    a = list(alpha) if isinstance(alpha, tuple) else alpha
    got = jk.SparseCategoricalFocalCrossentropy(alpha=a, reduction=None)(labels, probs)
    want = keras_value(
        keras.losses.CategoricalFocalCrossentropy,
        h.one_hot(labels, K),
        probs,
        alpha=a,
        reduction=None,
    )
    h.assert_tree_allclose(np.asarray(got), want, **TOL)


def test_binary_aligns_ranks_as_keras():
    """(N,) labels with (N, 1) logits (a one-unit output layer), and the reverse."""
    r = h.rng(24)
    x, y = h.logits(r, (N, 1)), h.binary_labels(r, (N, 1))
    for labels, logits in [(y[:, 0], x), (y, x[:, 0])]:
        got = jk.BinaryCrossentropy(from_logits=True)(labels, logits)
        want = keras_value(keras.losses.BinaryCrossentropy, labels, logits,
                           from_logits=True)  # fmt: skip
        h.assert_tree_allclose(np.asarray(got), want, **TOL)


def test_positional_arguments_as_in_keras():
    """``SparseCategoricalCrossentropy(True)`` means ``from_logits=True`` in both."""
    r = h.rng(23)
    logits, labels = h.logits(r, (N, K)), h.labels(r, (N,), K)
    got = jk.SparseCategoricalCrossentropy(True)(labels, logits)
    want = keras_value(keras.losses.SparseCategoricalCrossentropy, labels, logits,
                       from_logits=True)  # fmt: skip
    h.assert_tree_allclose(np.asarray(got), want, **TOL)
    with pytest.raises(TypeError):
        jk.SparseCategoricalCrossentropy(True, None, "sum", -1, "n", None, 0.1)


# -- errors and packaging --------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: jk.SparseCategoricalCrossentropy(from_logits=False, z_loss=1e-3),
         ValueError, "z_loss"),
        (lambda: jk.SparseCategoricalCrossentropy(z_loss=-1.0), ValueError, "z_loss"),
        (lambda: jk.SparseCategoricalCrossentropy(label_smoothing=1.0),
         ValueError, "label_smoothing"),
        (lambda: jk.SparseCategoricalCrossentropy(ignore_class=1.5),
         Exception, "ignore_class"),
        (lambda: jk.SparseCategoricalCrossentropy(class_weights=np.ones((2, 2))),
         ValueError, "class_weights"),
        (lambda: jk.CategoricalCrossentropy(label_smoothing=-0.1),
         ValueError, "label_smoothing"),
        (lambda: jk.BinaryCrossentropy(from_logits=False, pos_weight=2.0),
         ValueError, "pos_weight"),
        (lambda: jk.BinaryFocalCrossentropy(alpha=1.5), ValueError, "alpha"),
        (lambda: jk.BinaryFocalCrossentropy(alpha=None), TypeError, "alpha"),
        (lambda: jk.BinaryFocalCrossentropy(apply_class_balancing=1),
         TypeError, "apply_class_balancing"),
        (lambda: jk.BinaryCrossentropy(from_logits="yes"), TypeError, "from_logits"),
        (lambda: jk.BinaryFocalCrossentropy(gamma=-1.0), ValueError, "gamma"),
        (lambda: jk.SparseCategoricalFocalCrossentropy(alpha=[0.5, -1.0]),
         ValueError, "alpha"),
        (lambda: jk.CategoricalCrossentropy(reduction="mean_over_everything"),
         ValueError, "reduction"),
    ],
)  # fmt: skip
def test_bad_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_shapes_raise_at_call():
    x = np.zeros((N, K), np.float32)
    with pytest.raises(ValueError, match="class_weights"):
        jk.SparseCategoricalCrossentropy(from_logits=True, class_weights=[1.0, 2.0])(
            np.zeros(N), x
        )


def test_import_jaxce_does_not_import_keras():
    code = "import sys, jaxce; assert 'keras' not in sys.modules, 'keras imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
