"""Differential tests against Keras 3 (JAX backend, set by conftest).

Mappings (see the loss docstrings):

- Keras' default reduction ``"sum_over_batch_size"`` is ours of the same name;
  Keras ``"mean_with_sample_weight"`` is our ``"mean"``.
- Probabilities: Keras clips to ``[1e-7, 1 - 1e-7]``: pass ``eps=1e-7``.
- ``BinaryCrossentropy`` / ``BinaryFocalCrossentropy`` first average over the last
  axis, so for ``(N, D)`` inputs Keras' per-row loss is the mean of our ``"none"``
  over ``D``; ``sample_weight`` of shape ``(N,)`` is ``weights`` of shape ``(N, 1)``
  and Keras ``"sum"`` is our ``"sum"`` divided by ``D``. ``"sum_over_batch_size"``
  then divides by ``N`` in Keras and by ``N * D`` here: the same number.
- ``CategoricalFocalCrossentropy`` on one-hot targets is `softmax_focal_loss` on
  ``argmax`` labels (with ``log(probs)`` as logits when ``from_logits=False``).
"""

from __future__ import annotations

import itertools

import helpers as h
import jax
import keras
import numpy as np
import pytest

import jaxce

N, D, K = 6, 3, 4


def _allow(cls):
    """A Keras loss class whose calls run under JAX's default promotion rules
    (Keras relies on rank promotion, which conftest makes an error for jaxce)
    and return NumPy arrays."""

    def make(*args, **kwargs):
        loss = cls(*args, **kwargs)

        def call(y_true, y_pred, **kw) -> np.ndarray:
            with jax.numpy_rank_promotion("allow"):
                with jax.numpy_dtype_promotion("standard"):
                    return np.asarray(loss(y_true, y_pred, **kw))

        return call

    return make


BinaryCrossentropy = _allow(keras.losses.BinaryCrossentropy)
CategoricalCrossentropy = _allow(keras.losses.CategoricalCrossentropy)
SparseCategoricalCrossentropy = _allow(keras.losses.SparseCategoricalCrossentropy)
BinaryFocalCrossentropy = _allow(keras.losses.BinaryFocalCrossentropy)
CategoricalFocalCrossentropy = _allow(keras.losses.CategoricalFocalCrossentropy)


def _bce_inputs(from_logits: bool):
    r = h.rng(10)
    y = h.binary_labels(r, (N, D))
    x = h.logits(r, (N, D)) if from_logits else h.uniform(r, (N, D), 0.02, 0.98)
    sw = h.uniform(r, (N,), 0.1, 2.0)
    return x, y, sw


def _jaxce_bce(x, y, from_logits: bool, **kw):
    if from_logits:
        return jaxce.sigmoid_binary_cross_entropy(x, y, **kw)
    return jaxce.binary_cross_entropy(x, y, eps=1e-7, **kw)


@pytest.mark.parametrize(
    "from_logits, smoothing, use_sw, reduction",
    list(
        itertools.product(
            [True, False],
            [0.0, 0.2],
            [False, True],
            ["sum_over_batch_size", "sum", "none", "mean_with_sample_weight"],
        )
    ),
)
def test_binary_crossentropy(from_logits, smoothing, use_sw, reduction):
    x, y, sw = _bce_inputs(from_logits)
    sw = sw if use_sw else None
    loss = BinaryCrossentropy(
        from_logits=from_logits, label_smoothing=smoothing, reduction=reduction
    )
    expected = np.asarray(loss(y, x, sample_weight=sw))
    ours = {
        "sum_over_batch_size": "sum_over_batch_size",
        "sum": "sum",
        "none": "none",
        "mean_with_sample_weight": "mean",
    }[reduction]
    got = _jaxce_bce(
        x,
        y,
        from_logits,
        label_smoothing=smoothing,
        weights=None if sw is None else sw[:, None],
        reduction=ours,
    )
    if reduction == "none":
        got = np.mean(np.asarray(got), axis=-1)
    elif reduction == "sum":
        got = np.asarray(got) / D
    h.assert_tree_allclose(got, expected)
    if sw is None and reduction == "sum_over_batch_size":  # and our default, "mean"
        h.assert_tree_allclose(
            _jaxce_bce(x, y, from_logits, label_smoothing=smoothing), expected
        )


def test_binary_crossentropy_probabilities_exactly_0_and_1():
    p = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 1e-9]], np.float32)
    y = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    expected = np.asarray(BinaryCrossentropy()(y, p))
    got = jaxce.binary_cross_entropy(p, y, eps=1e-7, reduction="sum_over_batch_size")
    h.assert_tree_allclose(got, expected)


def test_binary_crossentropy_docs_examples():
    y1 = np.array([0, 1, 0, 0], np.float32)
    z1 = np.array([-18.6, 0.51, 2.94, -12.8], np.float32)
    y2, z2 = y1.reshape(2, 2), z1.reshape(2, 2)
    bce = BinaryCrossentropy(from_logits=True)
    cases = [  # (keras value, jaxce value, value printed in the Keras docs)
        (bce(y1, z1), jaxce.sigmoid_binary_cross_entropy(z1, y1), 0.8654),
        (bce(y2, z2), jaxce.sigmoid_binary_cross_entropy(z2, y2), 0.8654),
        (
            bce(y2, z2, sample_weight=np.array([0.8, 0.2])),
            jaxce.sigmoid_binary_cross_entropy(
                z2,
                y2,
                weights=np.array([[0.8], [0.2]], np.float32),
                reduction="sum_over_batch_size",
            ),
            0.243,
        ),
        (
            BinaryCrossentropy(from_logits=True, reduction="sum")(y2, z2),
            jaxce.sigmoid_binary_cross_entropy(z2, y2, reduction="sum") / 2,
            1.730,
        ),
    ]
    for keras_value, ours, doc in cases:
        h.assert_tree_allclose(ours, np.asarray(keras_value))
        assert abs(float(ours) - doc) < 1.5e-3
    none = BinaryCrossentropy(from_logits=True, reduction=None)(y2, z2)
    ours = jaxce.sigmoid_binary_cross_entropy(z2, y2, reduction="none").mean(-1)
    h.assert_tree_allclose(ours, np.asarray(none))
    h.assert_tree_allclose(ours, np.array([0.235, 1.496]), atol=1e-3, rtol=0)


def _cce_inputs(from_logits: bool):
    r = h.rng(11)
    t = h.one_hot(h.labels(r, (N,), K), K)
    t[0] = h.probs(r, 1, K)[0]  # one soft target row
    x = h.logits(r, (N, K)) if from_logits else h.probs(r, N, K)
    sw = h.uniform(r, (N,), 0.1, 2.0)
    return x, t, sw


@pytest.mark.parametrize(
    "from_logits, smoothing, use_sw, reduction",
    list(
        itertools.product(
            [True, False],
            [0.0, 0.2],
            [False, True],
            ["sum_over_batch_size", "sum", "none"],
        )
    ),
)
def test_categorical_crossentropy(from_logits, smoothing, use_sw, reduction):
    x, t, sw = _cce_inputs(from_logits)
    sw = sw if use_sw else None
    loss = CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=smoothing, reduction=reduction
    )
    expected = np.asarray(loss(t, x, sample_weight=sw))
    kw = dict(label_smoothing=smoothing, weights=sw, reduction=reduction)
    if from_logits:
        got = jaxce.softmax_cross_entropy(x, t, **kw)
    else:
        got = jaxce.categorical_cross_entropy(x, t, eps=1e-7, **kw)
    h.assert_tree_allclose(got, expected)


@pytest.mark.parametrize("from_logits", [True, False])
def test_categorical_mean_with_sample_weight_is_mean(from_logits):
    x, t, sw = _cce_inputs(from_logits)
    loss = CategoricalCrossentropy(
        from_logits=from_logits, reduction="mean_with_sample_weight"
    )
    expected = np.asarray(loss(t, x, sample_weight=sw))
    if from_logits:
        got = jaxce.softmax_cross_entropy(x, t, weights=sw)
    else:
        got = jaxce.categorical_cross_entropy(x, t, eps=1e-7, weights=sw)
    h.assert_tree_allclose(got, expected)


def test_categorical_and_sparse_docs_examples():
    t = np.array([[0, 1, 0], [0, 0, 1]], np.float32)
    y = np.array([1, 2], np.int32)
    p = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32)
    sw = np.array([0.3, 0.7], np.float32)
    kw = dict(eps=1e-7, reduction="sum_over_batch_size")
    for keras_cls, fn, target in [
        (CategoricalCrossentropy, jaxce.categorical_cross_entropy, t),
        (
            SparseCategoricalCrossentropy,
            jaxce.sparse_categorical_cross_entropy,
            y,
        ),
    ]:
        cases = [
            (keras_cls()(target, p), fn(p, target, **kw), 1.177),
            (
                keras_cls()(target, p, sample_weight=sw),
                fn(p, target, weights=sw, **kw),
                0.814,
            ),
            (
                keras_cls(reduction="sum")(target, p),
                fn(p, target, eps=1e-7, reduction="sum"),
                2.354,
            ),
        ]
        for keras_value, ours, doc in cases:
            h.assert_tree_allclose(ours, np.asarray(keras_value))
            assert abs(float(ours) - doc) < 1e-3
        none = fn(p, target, eps=1e-7, reduction="none")
        h.assert_tree_allclose(none, np.asarray(keras_cls(reduction=None)(target, p)))
        h.assert_tree_allclose(none, np.array([0.0513, 2.303]), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "from_logits, ignore_class, use_sw",
    list(itertools.product([True, False], [None, -1, 255], [False, True])),
)
def test_sparse_categorical_ignore_class(from_logits, ignore_class, use_sw):
    r = h.rng(12)
    x = h.logits(r, (N, K)) if from_logits else h.probs(r, N, K)
    y = h.labels(r, (N,), K)
    if ignore_class is not None:
        y[[0, 3]] = ignore_class
    sw = h.uniform(r, (N,), 0.1, 2.0) if use_sw else None
    loss = SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=ignore_class
    )
    expected = np.asarray(loss(y, x, sample_weight=sw))
    kw = dict(ignore_index=ignore_class, weights=sw, reduction="sum_over_batch_size")
    if from_logits:
        got = jaxce.sparse_softmax_cross_entropy(x, y, **kw)
    else:
        got = jaxce.sparse_categorical_cross_entropy(x, y, eps=1e-7, **kw)
    h.assert_tree_allclose(got, expected)


def test_sparse_categorical_ignore_class_spatial():
    # Segmentation-style (N, H, W, K) with a "void" class 255.
    r = h.rng(13)
    x = h.logits(r, (2, 3, 2, K))
    y = h.labels(r, (2, 3, 2), K)
    y[0, 0, 1] = y[1, 2, 0] = 255
    loss = SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    got = jaxce.sparse_softmax_cross_entropy(
        x, y, ignore_index=255, reduction="sum_over_batch_size"
    )
    h.assert_tree_allclose(got, np.asarray(loss(y, x)))


@pytest.mark.parametrize(
    "from_logits, balanced, gamma, use_sw",
    list(
        itertools.product([True, False], [False, True], [0.0, 2.0, 3.5], [False, True])
    ),
)
def test_binary_focal_crossentropy(from_logits, balanced, gamma, use_sw):
    x, y, sw = _bce_inputs(from_logits)
    sw = sw if use_sw else None
    loss = BinaryFocalCrossentropy(
        apply_class_balancing=balanced,
        alpha=0.3,
        gamma=gamma,
        from_logits=from_logits,
    )
    expected = np.asarray(loss(y, x, sample_weight=sw))
    z = x if from_logits else np.log(x) - np.log1p(-x)
    got = jaxce.sigmoid_focal_loss(
        z,
        y,
        alpha=0.3 if balanced else None,
        gamma=gamma,
        weights=None if sw is None else sw[:, None],
        reduction="sum_over_batch_size",
    )
    h.assert_tree_allclose(got, expected)


@pytest.mark.parametrize("balanced", [False, True])
def test_binary_focal_docs_examples(balanced):
    y1 = np.array([0, 1, 0, 0], np.float32)
    z1 = np.array([-18.6, 0.51, 2.94, -12.8], np.float32)
    y2, z2 = y1.reshape(2, 2), z1.reshape(2, 2)
    alpha = 0.25 if balanced else None
    docs = {  # printed in the Keras docstring: (unbalanced, balanced)
        "ex1": (0.691, 0.51),
        "ex2": (0.647, 0.482),
        "sw": (0.133, 0.097),
        "sum": (1.222, 0.914),
    }

    def keras_loss(gamma, **kw):
        return BinaryFocalCrossentropy(
            apply_class_balancing=balanced, gamma=gamma, from_logits=True, **kw
        )

    def ours(z, y, gamma, **kw):
        return jaxce.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma, **kw)

    cases = [
        ("ex1", keras_loss(2)(y1, z1), ours(z1, y1, 2.0)),
        ("ex2", keras_loss(3)(y2, z2), ours(z2, y2, 3.0)),
        (
            "sw",
            keras_loss(3)(y2, z2, sample_weight=[0.8, 0.2]),
            ours(
                z2,
                y2,
                3.0,
                weights=np.array([[0.8], [0.2]], np.float32),
                reduction="sum_over_batch_size",
            ),
        ),
        (
            "sum",
            keras_loss(4, reduction="sum")(y2, z2),
            ours(z2, y2, 4.0, reduction="sum") / 2,
        ),
    ]
    for name, keras_value, got in cases:
        h.assert_tree_allclose(got, np.asarray(keras_value), rtol=1e-5, atol=1e-6)
        assert abs(float(got) - docs[name][balanced]) < 1.5e-3, name
    none = ours(z2, y2, 5.0, reduction="none").mean(-1)
    h.assert_tree_allclose(none, np.asarray(keras_loss(5, reduction=None)(y2, z2)))
    doc_none = [[0.0017, 1.1561], [0.0004, 0.8670]][balanced]
    h.assert_tree_allclose(none, np.array(doc_none), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "from_logits, alpha, gamma, use_sw",
    list(
        itertools.product(
            [True, False], [0.25, (0.1, 0.5, 1.0, 2.0)], [0.0, 2.0], [False, True]
        )
    ),
)
def test_categorical_focal_crossentropy(from_logits, alpha, gamma, use_sw):
    r = h.rng(14)
    y = h.labels(r, (N,), K)
    x = h.logits(r, (N, K)) if from_logits else h.probs(r, N, K)
    sw = h.uniform(r, (N,), 0.1, 2.0) if use_sw else None
    loss = CategoricalFocalCrossentropy(
        alpha=list(alpha) if isinstance(alpha, tuple) else alpha,
        gamma=gamma,
        from_logits=from_logits,
    )
    expected = np.asarray(loss(h.one_hot(y, K), x, sample_weight=sw))
    z = x if from_logits else np.log(x)
    a = np.asarray(alpha, np.float32) if isinstance(alpha, tuple) else alpha
    got = jaxce.softmax_focal_loss(
        z,
        y,
        alpha=a,
        gamma=gamma,
        weights=sw,
        reduction="sum_over_batch_size",
    )
    h.assert_tree_allclose(got, expected)


def test_categorical_focal_docs_examples():
    t = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    p = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32)
    y = np.argmax(t, -1)
    with np.errstate(divide="ignore"):
        z = np.log(p)  # -inf where p == 0: a non-target class, finite loss

    def ours(**kw):
        return jaxce.softmax_focal_loss(z, y, alpha=0.25, gamma=2.0, **kw)

    sw = np.array([0.3, 0.7], np.float32)
    kloss = CategoricalFocalCrossentropy
    cases = [
        (kloss()(t, p), ours(reduction="sum_over_batch_size"), 0.23315276),
        (
            kloss()(t, p, sample_weight=sw),
            ours(weights=sw, reduction="sum_over_batch_size"),
            0.1632,
        ),
        (kloss(reduction="sum")(t, p), ours(reduction="sum"), 0.46631),
    ]
    for keras_value, got, doc in cases:
        h.assert_tree_allclose(got, np.asarray(keras_value))
        assert abs(float(got) - doc) < 1e-4
    none = ours(reduction="none")
    h.assert_tree_allclose(none, np.asarray(kloss(reduction=None)(t, p)))
    h.assert_tree_allclose(none, np.array([3.2058331e-05, 4.6627346e-01]))
